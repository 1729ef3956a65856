//! Functional tests of the fixed-element ring `Ring<T, N>`: order, capacity, batch operations,
//! element drops, claims, positions that wrap past `u32::MAX`, and a property test against a
//! `VecDeque` model. Single-threaded: `tests/threaded.rs` covers two threads.
// The loom build (`--cfg loom`) runs only `tests/loom.rs`: its rings exist only inside a
// loom model, and have no `init_in_place`, `attach` or slice views.
#![cfg(not(loom))]
// These tests leak or drop `Drain`s on purpose: leaking one must stay harmless whatever its
// implementation (today it has no `Drop`, which these lints point out).
#![allow(clippy::forget_non_drop, clippy::drop_non_drop)]

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::mem;
use std::panic::{self, AssertUnwindSafe};

use proptest::prelude::*;
use spsc_core::{ClaimError, Full, Ring};

mod common;
use common::{
    drop_counts, drop_table, owner, proptest_config, scaled, start_position, Region, Tracked,
};

/// Offset of the consumer's `head` word in both rings: the second 128-byte line, after the
/// control block. The layout is part of the shared-memory format and locked at compile time by
/// `src/shared_layout.rs`; these tests use it to start a ring at an arbitrary position.
const HEAD_OFFSET: usize = 128;

/// Byte offsets in a `Ring<T, N>` of the stamp of `position`'s block and of `position`'s value,
/// from the layout the ring records: blocks of `block_len` elements at `block_offset`, each a
/// `u32` stamp and then the elements, aligned for `T`.
fn offsets<T, const N: usize>(position: u32) -> (usize, usize) {
    let layout = Ring::<T, N>::LAYOUT;
    let index = position as usize & (N - 1);
    let block_len = layout.block_len as usize;
    let block = layout.block_offset((index / block_len) as u32);
    let value = block + mem::align_of::<T>().max(4) + index % block_len * mem::size_of::<T>();
    (block, value)
}

/// An empty `Ring<T, N>` in `region` whose positions stand at `start`, exactly as if `start`
/// elements had been pushed and popped: the consumer's index is `start` and every block's stamp
/// is one past the last position of the lap before that it held. The only way to reach positions
/// near `u32::MAX` without pushing four billion elements.
fn ring_at<T, const N: usize>(region: &mut Region, start: u32) -> &Ring<T, N> {
    let len = region.len();
    let base = region.base();
    // SAFETY: `region` is valid, zeroed memory of `len` bytes, exclusively borrowed for as long
    // as the returned reference lives.
    unsafe { Ring::<T, N>::init_in_place(base, len) }.expect("region fits the ring");
    // Oldest first, so each block keeps the stamp of its latest position.
    for back in (1..=N as u32).rev() {
        let position = start.wrapping_sub(back);
        let (stamp_offset, _) = offsets::<T, N>(position);
        // SAFETY: the stamp is the first `u32` of its block, inside the ring (which fits the
        // region), 4-aligned; nothing else accesses the memory (the reference `init_in_place`
        // returned was discarded).
        unsafe {
            base.as_ptr()
                .add(stamp_offset)
                .cast::<u32>()
                .write(position.wrapping_add(1));
        }
    }
    // SAFETY: as for the stamps: the consumer index is the first `u32` of its line.
    unsafe { base.as_ptr().add(HEAD_OFFSET).cast::<u32>().write(start) };
    // SAFETY: the region was initialised above, and is borrowed for the reference's lifetime.
    unsafe { Ring::<T, N>::attach(base, len) }.expect("the ring initialised above")
}

fn region_for<T, const N: usize>() -> Region {
    Region::new(mem::size_of::<Ring<T, N>>())
}

#[test]
fn push_pop_peek_keep_fifo_order() {
    let mut ring = Ring::<u64, 8>::new();
    let (mut tx, mut rx) = ring.split();
    assert_eq!(rx.peek(), None);
    assert_eq!(rx.pop(), None);
    for value in 10..15 {
        tx.push(value).unwrap();
    }
    for value in 10..15 {
        assert_eq!(rx.peek(), Some(&value));
        assert_eq!(rx.peek(), Some(&value), "peek does not consume");
        assert_eq!(rx.pop(), Some(value));
    }
    assert_eq!(rx.peek(), None);
    assert_eq!(rx.pop(), None);
}

fn capacity_is_exactly<const N: usize>() {
    let mut ring = Box::new(Ring::<usize, N>::new());
    assert_eq!(Ring::<usize, N>::CAPACITY, N);
    let (mut tx, mut rx) = ring.split();
    assert_eq!((tx.capacity(), rx.capacity()), (N, N));
    for lap in 0..3 {
        for i in 0..N {
            assert!(!tx.is_full());
            tx.push(lap * N + i)
                .unwrap_or_else(|_| panic!("push {i} of {N} failed"));
        }
        assert!(tx.is_full());
        assert_eq!(tx.free_len(), 0);
        let Err(Full(back)) = tx.push(usize::MAX) else {
            panic!("push {} into a ring of {N} succeeded", N + 1);
        };
        assert_eq!(back, usize::MAX, "Full hands the value back");
        assert_eq!(rx.len(), N);
        for i in 0..N {
            assert_eq!(rx.pop(), Some(lap * N + i));
        }
        assert_eq!(rx.pop(), None);
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
    let mut ring = Ring::<String, 1>::new();
    let (mut tx, mut rx) = ring.split();
    tx.push("first".to_owned()).unwrap();
    let error = tx.push("second".to_owned()).unwrap_err();
    assert!(!format!("{error}").is_empty());
    assert_eq!(format!("{error:?}"), "Full(..)");
    assert_eq!(error.0, "second");
    assert_eq!(rx.pop().as_deref(), Some("first"));
    tx.push(error.0).unwrap();
    assert_eq!(rx.pop().as_deref(), Some("second"));
}

#[test]
fn wraps_around_over_many_laps_at_every_fill_level() {
    let mut ring = Ring::<u32, 4>::new();
    let (mut tx, mut rx) = ring.split();
    let mut next_in = 0u32;
    let mut next_out = 0u32;
    for round in 0..scaled(2000, 60) {
        // Vary how many go in and out so the positions take every phase relative to N.
        let burst = round % 5;
        for _ in 0..burst {
            if tx.push(next_in).is_ok() {
                next_in += 1;
            }
        }
        for _ in 0..(round % 3 + 1) {
            match rx.pop() {
                Some(value) => {
                    assert_eq!(value, next_out);
                    next_out += 1;
                }
                None => assert_eq!(next_out, next_in),
            }
        }
        assert_eq!(rx.len() as u32, next_in - next_out);
    }
    while let Some(value) = rx.pop() {
        assert_eq!(value, next_out);
        next_out += 1;
    }
    assert_eq!(next_out, next_in);
    assert!(next_in as usize > scaled(1000, 20), "many laps ran");
}

/// Fills and drains `Ring<T, N>` lap after lap, by single ops and by batches of every length up
/// to `N`, checking each value and the geometry the layout records.
fn fill_and_drain_laps<T: Copy + PartialEq + fmt::Debug + From<u8>, const N: usize>(
    block_len: u32,
) {
    assert_eq!(
        Ring::<T, N>::LAYOUT.block_len,
        block_len,
        "geometry of {N} elements"
    );
    let mut ring = Box::new(Ring::<T, N>::new());
    let (mut tx, mut rx) = ring.split();
    let value = |n: usize| T::from((n % 251) as u8);
    let mut next_in = 0;
    let mut next_out = 0;
    for lap in 0..scaled(8 * N + 40, N + 4) {
        let batch = lap % (N + 1);
        if lap % 2 == 0 {
            let items: Vec<T> = (next_in..next_in + batch).map(value).collect();
            next_in += tx.push_slice(&items);
        } else {
            next_in += tx.push_iter((next_in..next_in + batch).map(value));
        }
        let mut out = vec![value(0); N];
        let popped = rx.pop_slice(&mut out[..(lap * 7) % (N + 1)]);
        for got in &out[..popped] {
            assert_eq!(*got, value(next_out));
            next_out += 1;
        }
        assert_eq!(rx.len(), next_in - next_out);
        while let Some(got) = (lap % 3 == 0).then(|| rx.pop()).flatten() {
            assert_eq!(got, value(next_out));
            next_out += 1;
        }
    }
    while let Some(got) = rx.pop() {
        assert_eq!(got, value(next_out));
        next_out += 1;
    }
    assert_eq!(next_out, next_in);
}

/// Every kind of geometry: one block for the whole ring, blocks with a short last one, one
/// element per block, and capacities below a line's worth.
#[test]
fn every_geometry_keeps_fifo_order_through_wrap_around() {
    fill_and_drain_laps::<u64, 1>(1);
    fill_and_drain_laps::<u64, 2>(2);
    fill_and_drain_laps::<u64, 4>(4);
    fill_and_drain_laps::<u64, 8>(7);
    fill_and_drain_laps::<u64, 32>(7);
    fill_and_drain_laps::<u32, 16>(15);
    fill_and_drain_laps::<u16, 32>(30);
    fill_and_drain_laps::<u8, 1>(1);
    fill_and_drain_laps::<u8, 64>(60);
    fill_and_drain_laps::<u8, 128>(60);
    fill_and_drain_laps::<u128, 8>(3);
    fill_and_drain_laps::<i16, 4>(4);
}

#[test]
fn push_slice_copies_what_fits() {
    let mut ring = Ring::<u16, 8>::new();
    let (mut tx, mut rx) = ring.split();
    assert_eq!(tx.push_slice(&[]), 0);
    assert_eq!(tx.push_slice(&[1, 2, 3]), 3);
    assert_eq!(
        tx.push_slice(&[4, 5, 6, 7, 8, 9, 10]),
        5,
        "only five slots left"
    );
    assert_eq!(tx.push_slice(&[11]), 0);
    let mut out = [0u16; 3];
    assert_eq!(rx.pop_slice(&mut out), 3);
    assert_eq!(out, [1, 2, 3]);
    // Wraps: three slots free at the start of the array.
    assert_eq!(tx.push_slice(&[9, 10, 11, 12]), 3);
    let mut out = [0u16; 16];
    assert_eq!(rx.pop_slice(&mut out), 8);
    assert_eq!(&out[..8], &[4, 5, 6, 7, 8, 9, 10, 11]);
    assert_eq!(rx.pop_slice(&mut out), 0);
    assert_eq!(rx.pop_slice(&mut []), 0);
}

#[test]
fn push_iter_leaves_the_rest_in_the_iterator() {
    let mut ring = Ring::<u32, 4>::new();
    let (mut tx, mut rx) = ring.split();
    let mut source = 0..10;
    assert_eq!(tx.push_iter(&mut source), 4);
    assert_eq!(source.next(), Some(4), "nothing was taken beyond what fit");
    assert_eq!(tx.push_iter(&mut source), 0, "full: nothing taken");
    assert_eq!(source.next(), Some(5));
    assert_eq!(rx.pop(), Some(0));
    assert_eq!(rx.pop(), Some(1));
    assert_eq!(tx.push_iter(&mut source), 2);
    assert_eq!(source.next(), Some(8));
    let all: Vec<u32> = rx.drain(usize::MAX).collect();
    assert_eq!(all, [2, 3, 6, 7]);
    assert_eq!(tx.push_iter(std::iter::empty()), 0);
    assert_eq!(tx.push_iter([100, 101]), 2);
    assert_eq!(rx.drain(10).collect::<Vec<_>>(), [100, 101]);
}

#[test]
fn pop_slice_takes_at_most_the_ready_elements() {
    let mut ring = Ring::<u8, 8>::new();
    let (mut tx, mut rx) = ring.split();
    tx.push_slice(&[1, 2, 3, 4, 5]);
    let mut out = [0u8; 2];
    assert_eq!(rx.pop_slice(&mut out), 2);
    assert_eq!(out, [1, 2]);
    assert_eq!(tx.free_len(), 5, "pop_slice published its index");
    let mut out = [0u8; 8];
    assert_eq!(rx.pop_slice(&mut out), 3);
    assert_eq!(&out[..3], &[3, 4, 5]);
    assert_eq!(&out[3..], &[0; 5], "the rest of the slice is untouched");
    assert_eq!(tx.free_len(), 8);
}

#[test]
fn drain_partially_consumed_publishes_exactly_what_it_yielded() {
    let mut ring = Ring::<u32, 8>::new();
    let (mut tx, mut rx) = ring.split();
    assert_eq!(tx.push_slice(&[0, 1, 2, 3, 4, 5, 6, 7]), 8);
    {
        let mut drain = rx.drain(5);
        assert_eq!(drain.len(), 5);
        assert_eq!(drain.next(), Some(0));
        assert_eq!(drain.next(), Some(1));
        assert_eq!(drain.len(), 3);
        // Dropped here with three of its five elements not taken.
    }
    assert_eq!(
        tx.free_len(),
        2,
        "exactly the two yielded elements were released"
    );
    assert_eq!(tx.push_slice(&[8, 9, 10]), 2);
    assert_eq!(rx.pop(), Some(2), "the untaken elements are still there");
    {
        let drain = rx.drain(3);
        assert_eq!(drain.len(), 3);
        // Dropped without yielding anything.
    }
    assert_eq!(tx.free_len(), 1);
    assert_eq!(rx.drain(0).count(), 0);
    assert_eq!(rx.drain(100).collect::<Vec<_>>(), [3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(tx.free_len(), 8);
    assert_eq!(rx.drain(100).next(), None);
}

#[test]
fn drain_sees_only_what_was_ready_when_it_started() {
    let mut ring = Ring::<u32, 8>::new();
    let (mut tx, mut rx) = ring.split();
    tx.push(1).unwrap();
    let drain = rx.drain(8);
    assert_eq!(drain.len(), 1);
    // The producer cannot push while the drain borrows the consumer in this thread, but the
    // drain's bound is fixed at creation anyway; check it yields exactly that.
    assert_eq!(drain.collect::<Vec<_>>(), [1]);
    tx.push(2).unwrap();
    assert_eq!(rx.drain(8).collect::<Vec<_>>(), [2]);
}

#[test]
fn len_is_empty_is_full_track_the_contents() {
    let mut ring = Ring::<u8, 4>::new();
    let (mut tx, mut rx) = ring.split();
    for round in 0..3u8 {
        assert!(rx.is_empty());
        assert_eq!(rx.len(), 0);
        assert_eq!(tx.free_len(), 4);
        for i in 0..4u8 {
            assert!(!tx.is_full());
            tx.push(round * 4 + i).unwrap();
            assert_eq!(rx.len(), usize::from(i) + 1);
            assert!(!rx.is_empty());
            assert_eq!(tx.free_len(), 3 - usize::from(i));
        }
        assert!(tx.is_full());
        for i in 0..4u8 {
            assert_eq!(rx.pop(), Some(round * 4 + i));
            assert_eq!(rx.len(), 3 - usize::from(i));
            assert!(!tx.is_full());
        }
    }
}

#[test]
fn zero_sized_elements_are_counted() {
    let mut ring = Ring::<(), 4>::new();
    let (mut tx, mut rx) = ring.split();
    for _ in 0..4 {
        tx.push(()).unwrap();
    }
    assert!(tx.push(()).is_err());
    assert_eq!(rx.len(), 4);
    assert_eq!(rx.drain(3).count(), 3);
    assert_eq!(rx.pop(), Some(()));
    assert_eq!(rx.pop(), None);
}

#[test]
fn every_element_is_dropped_exactly_once() {
    const TOTAL: usize = 40;
    let table = drop_table(TOTAL);
    let next = Cell::new(0);
    let make = || {
        next.set(next.get() + 1);
        Tracked {
            id: next.get() - 1,
            drops: &table,
        }
    };
    {
        let mut ring = Box::new(Ring::<Tracked<'_>, 8>::new());
        let (mut tx, mut rx) = ring.split();
        // Popped elements: dropped by the caller.
        for _ in 0..8 {
            tx.push(make()).unwrap();
        }
        let full = tx.push(make()).unwrap_err();
        drop(full);
        for _ in 0..5 {
            drop(rx.pop().unwrap());
        }
        // Drained elements, one drain partially consumed, one with its items collected.
        assert_eq!(tx.push_iter((0..5).map(|_| make())), 5);
        {
            let mut drain = rx.drain(4);
            drop(drain.next());
            drop(drain.next());
        }
        let drained: Vec<_> = rx.drain(3).collect();
        assert_eq!(drained.len(), 3);
        drop(drained);
        // A peeked element stays in the ring.
        assert!(rx.peek().is_some());
        // Left in the ring, wrapped around the slot array, when everything is dropped.
        assert_eq!(tx.push_iter((0..6).map(|_| make())), 5, "three were queued");
        assert_eq!(rx.len(), 8);
        drop(tx);
        drop(rx);
        let counts = drop_counts(&table)[..next.get()].to_vec();
        assert_eq!(
            counts.iter().filter(|&&c| c == 0).count(),
            8,
            "exactly the 8 queued elements are alive before the ring is dropped: {counts:?}"
        );
    }
    let used = next.get();
    let counts = drop_counts(&table);
    assert_eq!(&counts[..used], &vec![1; used][..], "drop counts by id");
}

#[test]
fn a_ring_dropped_after_its_positions_wrapped_drops_what_it_holds() {
    // `Ring::drop` walks the stamps from the consumer's index; check it across the wrap of the
    // slot array with a full ring and with a partly consumed one.
    for consumed in [0usize, 3, 7] {
        let table = drop_table(16);
        {
            let mut ring = Ring::<Tracked<'_>, 8>::new();
            let (mut tx, mut rx) = ring.split();
            for id in 0..5 {
                tx.push(Tracked { id, drops: &table }).unwrap();
            }
            for _ in 0..5 {
                drop(rx.pop());
            }
            for id in 5..13 {
                tx.push(Tracked { id, drops: &table }).unwrap();
            }
            for _ in 0..consumed {
                drop(rx.pop());
            }
        }
        assert_eq!(drop_counts(&table)[..13], [1; 13], "consumed {consumed}");
    }
}

#[test]
fn push_iter_that_panics_keeps_what_it_pushed_before_the_panic() {
    let table = drop_table(8);
    let mut ring = Ring::<Tracked<'_>, 8>::new();
    let (mut tx, mut rx) = ring.split();
    tx.push(Tracked {
        id: 0,
        drops: &table,
    })
    .unwrap();
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        tx.push_iter((1..8).map(|id| {
            assert!(id < 3, "iterator fails at element {id}");
            Tracked { id, drops: &table }
        }))
    }));
    assert!(result.is_err());
    // Elements 1 and 2 were pushed whole before the iterator panicked: they are in the ring,
    // in order, and nothing half-written is visible.
    assert_eq!(rx.len(), 3);
    let ids: Vec<usize> = rx.drain(8).map(|t| t.id).collect();
    assert_eq!(ids, [0, 1, 2]);
    assert!(rx.pop().is_none());
    tx.push(Tracked {
        id: 3,
        drops: &table,
    })
    .unwrap();
    assert_eq!(rx.pop().map(|t| t.id), Some(3));
    drop(tx);
    drop(rx);
    drop(ring);
    assert_eq!(drop_counts(&table)[..4], [1, 1, 1, 1]);
}

#[test]
fn claiming_a_taken_side_names_the_owner() {
    let ring = Ring::<u32, 4>::new();
    assert_eq!(ring.holders(), (0, 0));
    let tx = ring.claim_producer(owner(11)).unwrap();
    let rx = ring.claim_consumer(owner(22)).unwrap();
    assert_eq!(ring.holders(), (11, 22));
    let error = ring.claim_producer(owner(33)).unwrap_err();
    assert_eq!(error, ClaimError::Taken { owner: 11 });
    assert!(error.to_string().contains("11"), "{error}");
    assert_eq!(
        ring.claim_consumer(owner(33)).unwrap_err(),
        ClaimError::Taken { owner: 22 }
    );
    assert_eq!(
        ring.claim_producer(owner(11)).unwrap_err(),
        ClaimError::Taken { owner: 11 },
        "even the holder cannot claim twice"
    );
    drop(tx);
    assert_eq!(ring.holders(), (0, 22), "released on drop");
    drop(rx);
    assert_eq!(ring.holders(), (0, 0));
    let _tx = ring.claim_producer(owner(33)).unwrap();
    let _rx = ring.claim_consumer(owner(44)).unwrap();
    assert_eq!(ring.holders(), (33, 44));
}

#[test]
fn a_reclaimed_producer_continues_at_the_right_position() {
    let ring = Ring::<u32, 8>::new();
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    let mut expected = VecDeque::new();
    let mut next = 0;
    for round in 0..scaled(50, 10) as u32 {
        let mut tx = ring.claim_producer(owner(100 + round)).unwrap();
        for _ in 0..(round % 4 + 1) {
            if tx.push(next).is_ok() {
                expected.push_back(next);
                next += 1;
            }
        }
        assert_eq!(tx.free_len(), 8 - expected.len());
        drop(tx);
        for _ in 0..(round % 3) {
            assert_eq!(rx.pop(), expected.pop_front());
        }
    }
    let mut tx = ring.claim_producer(owner(1)).unwrap();
    while tx.push(next).is_ok() {
        expected.push_back(next);
        next += 1;
    }
    assert_eq!(expected.len(), 8);
    assert_eq!(rx.drain(8).collect::<VecDeque<_>>(), expected);
}

#[test]
fn a_reclaimed_consumer_starts_at_the_oldest_unconsumed_element() {
    let ring = Ring::<u32, 8>::new();
    let mut tx = ring.claim_producer(owner(1)).unwrap();
    tx.push_slice(&[0, 1, 2, 3, 4, 5]);
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    assert_eq!(rx.pop(), Some(0));
    assert_eq!(rx.drain(2).collect::<Vec<_>>(), [1, 2]);
    drop(rx);
    let mut rx = ring.claim_consumer(owner(3)).unwrap();
    assert_eq!(rx.len(), 3);
    assert_eq!(rx.pop(), Some(3));
    {
        let mut drain = rx.drain(2);
        assert_eq!(drain.next(), Some(4));
    }
    drop(rx);
    let mut rx = ring.claim_consumer(owner(4)).unwrap();
    assert_eq!(rx.pop(), Some(5));
    assert_eq!(rx.pop(), None);
}

#[test]
fn take_over_from_a_dead_owner() {
    let ring = Ring::<u32, 4>::new();
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    let mut tx = ring.claim_producer(owner(7)).unwrap();
    tx.push(1).unwrap();
    tx.push(2).unwrap();
    // The holder "dies": its claim is never released.
    mem::forget(tx);
    assert_eq!(ring.holders().0, 7);
    assert_eq!(
        ring.claim_producer(owner(8)).unwrap_err(),
        ClaimError::Taken { owner: 7 }
    );
    // SAFETY: owner 9 is not the holder, so the take-over must fail without creating a handle.
    let wrong = unsafe { ring.take_over_producer(owner(9), owner(8)) };
    assert_eq!(wrong.unwrap_err(), ClaimError::Taken { owner: 7 });
    // SAFETY: the forgotten handle of owner 7 is never used again.
    let mut tx = unsafe { ring.take_over_producer(owner(7), owner(8)) }.unwrap();
    assert_eq!(ring.holders(), (8, 2));
    tx.push(3).unwrap();
    tx.push(4).unwrap();
    assert!(
        tx.push(5).is_err(),
        "the new producer knows the ring holds four"
    );
    assert_eq!(rx.pop(), Some(1));
    assert_eq!(rx.pop(), Some(2));

    mem::forget(rx);
    // SAFETY: the forgotten consumer of owner 2 is never used again.
    let mut rx = unsafe { ring.take_over_consumer(owner(2), owner(5)) }.unwrap();
    assert_eq!(ring.holders(), (8, 5));
    assert_eq!(rx.drain(4).collect::<Vec<_>>(), [3, 4]);
    drop(tx);
    // SAFETY: the side is free, not held by owner 8, so this must fail.
    let stale = unsafe { ring.take_over_producer(owner(8), owner(6)) };
    assert_eq!(stale.unwrap_err(), ClaimError::Taken { owner: 0 });
}

/// Writes `value` at `position` of `Ring<T, N>` and stamps its block published up to there, as
/// a producer does.
fn forge_published<T: Copy, const N: usize>(region: &mut Region, position: u32, value: T) {
    let (stamp, slot) = offsets::<T, N>(position);
    let base = region.base();
    // SAFETY: both lie inside the ring's blocks, which fit the region, and are aligned (blocks
    // start aligned for their stamp and elements); no handle is reading or writing this block
    // meanwhile (the producer that owns it is the one being impersonated).
    unsafe {
        base.as_ptr().add(slot).cast::<T>().write(value);
        base.as_ptr()
            .add(stamp)
            .cast::<u32>()
            .write(position.wrapping_add(1));
    }
}

/// One-element blocks of a ring of more than 16 are spread over 16 regions: consecutive
/// positions never share a cache line, every position has a block of its own, and the recorded
/// layout (`block_offset`) says where the ring really puts them.
#[test]
fn spread_blocks_keep_consecutive_positions_on_separate_lines() {
    type Wide = [u8; 64];
    const N: usize = 64;
    let layout = Ring::<Wide, N>::LAYOUT;
    assert_eq!((layout.block_len, layout.block_spread), (1, 16));
    let lines = |block: usize| {
        let start = layout.block_offset(block as u32);
        (start / 64, (start + layout.block_size as usize - 1) / 64)
    };
    for block in 0..N {
        let (first, last) = lines(block);
        let (next_first, next_last) = lines((block + 1) % N);
        assert!(
            last < next_first || next_last < first,
            "blocks {block} and {} share a line",
            (block + 1) % N
        );
    }
    let mut starts: Vec<usize> = (0..N).map(|b| layout.block_offset(b as u32)).collect();
    starts.sort_unstable();
    starts.dedup();
    assert_eq!(starts.len(), N, "two blocks in one place");
    let end = layout.data_offset as usize + N * layout.block_size as usize;
    assert!(starts[0] >= layout.data_offset as usize && starts[N - 1] < end);

    // Pushed values land where the layout says, and values forged there are popped.
    let mut region = region_for::<Wide, N>();
    let len = region.len();
    let base = region.base();
    {
        // SAFETY: the region is valid zeroed memory, exclusively ours for this block.
        let ring = unsafe { Ring::<Wide, N>::init_in_place(base, len) }.unwrap();
        let mut tx = ring.claim_producer(owner(1)).unwrap();
        assert_eq!(tx.push_slice(&[[1; 64], [2; 64], [3; 64]]), 3);
    }
    for position in 0..3u32 {
        let (_, value) = offsets::<Wide, N>(position);
        // SAFETY: inside the ring's blocks, which fit the region; no handle is alive.
        let found = unsafe { base.as_ptr().add(value).cast::<Wide>().read() };
        assert_eq!(found, [position as u8 + 1; 64]);
    }
    forge_published::<Wide, N>(&mut region, 3, [40; 64]);
    forge_published::<Wide, N>(&mut region, 4, [50; 64]);
    // SAFETY: initialised above; only this test's handles use the region from here on.
    let ring = unsafe { Ring::<Wide, N>::attach(base, len) }.unwrap();
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    let popped: Vec<u8> = core::iter::from_fn(|| rx.pop()).map(|v| v[0]).collect();
    assert_eq!(popped, [1, 2, 3, 40, 50]);
}

/// A producer killed inside `push_slice` after stamping the batch's later blocks but before its
/// first stamp (stored last) published nothing; its successor must neither deliver those
/// elements nor let the consumer read them while it overwrites them.
///
/// `u64`s share a line seven to a block: the dead batch `5..9` fills positions 5 and 6 of block
/// 0 (unstamped) and 7 and 8 of block 1 (stamped).
#[test]
fn take_over_after_an_interrupted_batch_delivers_only_whole_batches() {
    const N: usize = 16;
    assert_eq!(Ring::<u64, N>::LAYOUT.block_len, 7);
    let mut region = region_for::<u64, N>();
    let len = region.len();
    let base = region.base();
    {
        // SAFETY: the region is valid zeroed memory, exclusively ours for this block.
        let ring = unsafe { Ring::<u64, N>::init_in_place(base, len) }.unwrap();
        let mut tx = ring.claim_producer(owner(7)).unwrap();
        assert_eq!(tx.push_slice(&[10, 11, 12, 13, 14]), 5);
        mem::forget(tx); // dies holding the producer side
    }
    forge_published::<u64, N>(&mut region, 7, 666);
    forge_published::<u64, N>(&mut region, 8, 667);
    // SAFETY: initialised above; only this test's handles use the region from here on.
    let ring = unsafe { Ring::<u64, N>::attach(base, len) }.unwrap();
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    // SAFETY: the forgotten producer of owner 7 is never used again.
    let mut tx = unsafe { ring.take_over_producer(owner(7), owner(8)) }.unwrap();
    assert_eq!(
        tx.position(),
        5,
        "the interrupted batch is not part of the ring"
    );
    assert_eq!(rx.drain(8).collect::<Vec<_>>(), [10, 11, 12, 13, 14]);
    assert_eq!(rx.pop(), None);
    assert_eq!(tx.push_slice(&[15, 16]), 2);
    assert_eq!(rx.pop(), Some(15));
    assert_eq!(rx.pop(), Some(16));
    assert_eq!(
        rx.pop(),
        None,
        "the dead producer's stamp of block 1 was cleared"
    );
    assert_eq!(tx.push_slice(&[17, 18, 19]), 3);
    let mut out = [0; 8];
    assert_eq!(rx.pop_slice(&mut out), 3);
    assert_eq!(out[..3], [17, 18, 19]);
}

/// The same with elements that have a block each: the dead batch `2..5` stamped 3 and 4 but
/// not 2.
#[test]
fn take_over_after_an_interrupted_batch_of_large_elements() {
    const N: usize = 8;
    type Big = [u64; 8];
    assert_eq!(Ring::<Big, N>::LAYOUT.block_len, 1);
    let mut region = region_for::<Big, N>();
    let len = region.len();
    let base = region.base();
    {
        // SAFETY: the region is valid zeroed memory, exclusively ours for this block.
        let ring = unsafe { Ring::<Big, N>::init_in_place(base, len) }.unwrap();
        let mut tx = ring.claim_producer(owner(7)).unwrap();
        assert_eq!(tx.push_slice(&[[10; 8], [11; 8]]), 2);
        mem::forget(tx);
    }
    forge_published::<Big, N>(&mut region, 3, [666; 8]);
    forge_published::<Big, N>(&mut region, 4, [667; 8]);
    // SAFETY: initialised above; only this test's handles use the region from here on.
    let ring = unsafe { Ring::<Big, N>::attach(base, len) }.unwrap();
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    // SAFETY: the forgotten producer of owner 7 is never used again.
    let mut tx = unsafe { ring.take_over_producer(owner(7), owner(8)) }.unwrap();
    assert_eq!(tx.position(), 2);
    assert_eq!(rx.pop(), Some([10; 8]));
    assert_eq!(rx.pop(), Some([11; 8]));
    assert_eq!(rx.pop(), None);
    tx.push([12; 8]).unwrap();
    assert_eq!(rx.pop(), Some([12; 8]));
    assert_eq!(rx.pop(), None, "the dead producer's stamp at 3 was cleared");
}

#[test]
fn split_clears_claims_of_leaked_handles() {
    let mut ring = Ring::<u32, 4>::new();
    {
        let (mut tx, rx) = ring.split();
        tx.push(1).unwrap();
        mem::forget(tx);
        mem::forget(rx);
    }
    assert_eq!(ring.holders(), (1, 1));
    let (mut tx, mut rx) = ring.split();
    tx.push(2).unwrap();
    assert_eq!(rx.pop(), Some(1));
    assert_eq!(rx.pop(), Some(2));
}

#[test]
fn a_ring_in_caller_memory_works_like_an_owned_one() {
    let mut region = region_for::<u64, 16>();
    let len = region.len();
    let base = region.base();
    // SAFETY: `region` is valid for `len` bytes and outlives `ring`; nothing else touches it.
    let ring = unsafe { Ring::<u64, 16>::init_in_place(base, len) }.unwrap();
    let mut tx = ring.claim_producer(owner(1)).unwrap();
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    for lap in 0..5u64 {
        assert_eq!(tx.push_iter(lap * 16..lap * 16 + 16), 16);
        assert!(tx.is_full());
        assert_eq!(
            rx.drain(16).collect::<Vec<_>>(),
            (lap * 16..lap * 16 + 16).collect::<Vec<_>>()
        );
    }
}

/// Positions wrap at `u32::MAX`; run single and batch operations across the wrap.
#[test]
fn positions_wrap_past_u32_max() {
    for start in [
        u32::MAX - 20,
        u32::MAX - 7,
        u32::MAX,
        0u32.wrapping_sub(1 << 20),
    ] {
        let mut region = region_for::<u64, 8>();
        let ring = ring_at::<u64, 8>(&mut region, start);
        let mut tx = ring.claim_producer(owner(1)).unwrap();
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        assert!(
            rx.is_empty(),
            "start {start}: a fresh ring at any position is empty"
        );
        assert_eq!(tx.free_len(), 8);
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        for round in 0..12u32 {
            match round % 3 {
                0 => {
                    while tx.push(next_in).is_ok() {
                        next_in += 1;
                    }
                }
                1 => {
                    let batch: Vec<u64> = (next_in..next_in + 5).collect();
                    next_in += tx.push_slice(&batch) as u64;
                }
                _ => {
                    next_in += tx.push_iter(next_in..next_in + 3) as u64;
                }
            }
            assert_eq!(rx.len() as u64, next_in - next_out, "start {start}");
            if round.is_multiple_of(2) {
                for value in rx.drain(6) {
                    assert_eq!(value, next_out);
                    next_out += 1;
                }
            } else {
                let mut out = [0u64; 3];
                let n = rx.pop_slice(&mut out);
                assert_eq!(
                    &out[..n],
                    &(next_out..next_out + n as u64).collect::<Vec<_>>()[..]
                );
                next_out += n as u64;
                if let Some(value) = rx.pop() {
                    assert_eq!(value, next_out);
                    next_out += 1;
                }
            }
            // A new producer must find the same position across the wrap.
            if round % 4 == 3 {
                drop(tx);
                tx = ring.claim_producer(owner(3)).unwrap();
                assert_eq!(tx.free_len() as u64, 8 - (next_in - next_out));
            }
        }
        assert!(next_out > 30, "the positions passed u32::MAX");
    }
}

/// `mem::forget` is safe, so a leaked `Drain` must not cause an element it already yielded
/// (moved out) to be read again: not by a re-claimed consumer, nor by the ring's destructor.
#[test]
fn a_forgotten_drain_does_not_deliver_its_elements_again() {
    let ring = Ring::<u32, 4>::new();
    let mut tx = ring.claim_producer(owner(1)).unwrap();
    tx.push_slice(&[1, 2, 3, 4]);
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    let mut drain = rx.drain(3);
    assert_eq!(drain.next(), Some(1));
    mem::forget(drain);
    assert_eq!(
        rx.pop(),
        Some(2),
        "the live consumer continues after the yielded element"
    );
    let mut drain = rx.drain(3);
    assert_eq!(drain.next(), Some(3));
    mem::forget(drain);
    drop(rx);
    let mut rx = ring.claim_consumer(owner(3)).unwrap();
    assert_eq!(
        rx.pop(),
        Some(4),
        "element 3 was moved out by the forgotten drain"
    );
    drop(rx);

    let mut drain_ring = Ring::<u32, 4>::new();
    {
        let (mut tx, mut rx) = drain_ring.split();
        tx.push_slice(&[1, 2, 3]);
        let mut drain = rx.drain(3);
        assert_eq!(drain.next(), Some(1));
        mem::forget(drain);
    }
    let (_tx, mut rx) = drain_ring.split();
    assert_eq!(
        rx.pop(),
        Some(2),
        "element 1 was moved out by the forgotten drain"
    );
}

/// The destructor counterpart of the test above: with an element type that owns a resource, a
/// second read would be a double free, so it is checked with drop counters.
#[test]
fn a_forgotten_drain_does_not_make_the_ring_drop_an_element_twice() {
    let table = drop_table(4);
    {
        let mut ring = Ring::<Tracked<'_>, 4>::new();
        let (mut tx, mut rx) = ring.split();
        for id in 0..3 {
            tx.push(Tracked { id, drops: &table }).unwrap();
        }
        let mut drain = rx.drain(3);
        drop(drain.next());
        mem::forget(drain);
        drop(rx);
        drop(tx);
    }
    assert_eq!(drop_counts(&table)[..3], [1, 1, 1]);

    // The consumer leaked as well: nothing publishes its index afterwards.
    let table = drop_table(4);
    {
        let mut ring = Ring::<Tracked<'_>, 4>::new();
        let (mut tx, mut rx) = ring.split();
        for id in 0..3 {
            tx.push(Tracked { id, drops: &table }).unwrap();
        }
        let mut drain = rx.drain(3);
        drop(drain.next());
        drop(drain.next());
        mem::forget(drain);
        mem::forget(rx);
        drop(tx);
    }
    assert_eq!(drop_counts(&table)[..3], [1, 1, 1]);
}

/// One step of the property test.
#[derive(Clone, Debug)]
enum Op {
    Push,
    PushSlice(usize),
    PushIter(usize),
    Pop,
    Peek,
    PopSlice(usize),
    /// Start a drain of at most `.0` elements and take `.1` of them.
    Drain(usize, usize),
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
        2 => (len.clone(), len).prop_map(|(max, take)| Op::Drain(max, take)),
        1 => Just(Op::ReclaimProducer),
        1 => Just(Op::ReclaimConsumer),
    ]
}

/// An element the model test can make from a counter and compare.
trait ModelElem: Copy + PartialEq + fmt::Debug {
    fn make(n: u32) -> Self;
}

impl ModelElem for u32 {
    fn make(n: u32) -> Self {
        n
    }
}

impl ModelElem for u64 {
    fn make(n: u32) -> Self {
        u64::from(n) << 32 | u64::from(!n)
    }
}

impl ModelElem for u16 {
    fn make(n: u32) -> Self {
        n as u16
    }
}

impl ModelElem for [u32; 16] {
    fn make(n: u32) -> Self {
        std::array::from_fn(|i| n.wrapping_mul(i as u32 + 1))
    }
}

/// Runs `ops` against `Ring<T, MODEL_N>` at positions from `start` and a `VecDeque` model.
fn run_model<T: ModelElem, const MODEL_N: usize>(
    start: u32,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let mut region = region_for::<T, MODEL_N>();
    let ring = ring_at::<T, MODEL_N>(&mut region, start);
    let mut ids = 10..;
    let mut tx = ring.claim_producer(owner(ids.next().unwrap())).unwrap();
    let mut rx = ring.claim_consumer(owner(ids.next().unwrap())).unwrap();
    let mut model = VecDeque::new();
    let mut next = 0u32;
    for op in ops {
        let free = MODEL_N - model.len();
        match *op {
            Op::Push => match tx.push(T::make(next)) {
                Ok(()) => {
                    prop_assert!(free > 0);
                    model.push_back(T::make(next));
                    next += 1;
                }
                Err(Full(back)) => {
                    prop_assert_eq!(free, 0);
                    prop_assert_eq!(back, T::make(next));
                }
            },
            Op::PushSlice(len) => {
                let items: Vec<T> = (next..next + len as u32).map(T::make).collect();
                let pushed = tx.push_slice(&items);
                prop_assert_eq!(pushed, len.min(free));
                model.extend(&items[..pushed]);
                next += pushed as u32;
            }
            Op::PushIter(len) => {
                let mut items = (next..next + len as u32).map(T::make);
                let pushed = tx.push_iter(&mut items);
                prop_assert_eq!(pushed, len.min(free));
                model.extend((next..next + pushed as u32).map(T::make));
                next += pushed as u32;
                prop_assert_eq!(items.next(), (pushed < len).then(|| T::make(next)));
            }
            Op::Pop => prop_assert_eq!(rx.pop(), model.pop_front()),
            Op::Peek => prop_assert_eq!(rx.peek(), model.front()),
            Op::PopSlice(len) => {
                let mut out = vec![T::make(u32::MAX); len];
                let popped = rx.pop_slice(&mut out);
                prop_assert_eq!(popped, len.min(model.len()));
                let expected: Vec<T> = model.drain(..popped).collect();
                prop_assert_eq!(&out[..popped], &expected[..]);
            }
            Op::Drain(max, take) => {
                let mut drain = rx.drain(max);
                let ready = max.min(model.len());
                prop_assert_eq!(drain.len(), ready);
                for _ in 0..take.min(ready) {
                    prop_assert_eq!(drain.next(), model.pop_front());
                }
                if take >= ready {
                    prop_assert_eq!(drain.next(), None);
                }
            }
            Op::ReclaimProducer => {
                let id = ids.next().unwrap();
                prop_assert_eq!(
                    ring.claim_producer(owner(id)).unwrap_err(),
                    ClaimError::Taken {
                        owner: ring.holders().0
                    }
                );
                drop(tx);
                prop_assert_eq!(ring.holders().0, 0);
                tx = ring.claim_producer(owner(id)).unwrap();
                prop_assert_eq!(ring.holders().0, id);
            }
            Op::ReclaimConsumer => {
                drop(rx);
                prop_assert_eq!(ring.holders().1, 0);
                rx = ring.claim_consumer(owner(ids.next().unwrap())).unwrap();
            }
        }
        prop_assert_eq!(rx.len(), model.len());
        prop_assert_eq!(rx.is_empty(), model.is_empty());
        prop_assert_eq!(tx.free_len(), MODEL_N - model.len());
        prop_assert_eq!(tx.is_full(), model.len() == MODEL_N);
    }
    let rest: Vec<T> = rx.drain(MODEL_N).collect();
    prop_assert_eq!(rest, Vec::from(model));
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config())]

    /// `u32`s, 8 of them: one block holds the whole ring.
    #[test]
    fn matches_a_vecdeque_model(
        start in start_position(),
        ops in prop::collection::vec(op(8), 0..if cfg!(miri) { 40 } else { 200 }),
    ) {
        run_model::<u32, 8>(start, &ops)?;
    }

    /// `u64`s, 16 of them: blocks of 7, 7 and 2.
    #[test]
    fn matches_a_vecdeque_model_with_a_short_last_block(
        start in start_position(),
        ops in prop::collection::vec(op(16), 0..if cfg!(miri) { 40 } else { 200 }),
    ) {
        run_model::<u64, 16>(start, &ops)?;
    }

    /// `u16`s, 64 of them: blocks of 30, 30 and 4.
    #[test]
    fn matches_a_vecdeque_model_with_long_blocks(
        start in start_position(),
        ops in prop::collection::vec(op(64), 0..if cfg!(miri) { 40 } else { 200 }),
    ) {
        run_model::<u16, 64>(start, &ops)?;
    }

    /// 64-byte elements, a block each.
    #[test]
    fn matches_a_vecdeque_model_with_a_block_per_element(
        start in start_position(),
        ops in prop::collection::vec(op(8), 0..if cfg!(miri) { 40 } else { 200 }),
    ) {
        run_model::<[u32; 16], 8>(start, &ops)?;
    }

    /// 64-byte elements, 64 of them: a block each, spread over 16 regions of 4.
    #[test]
    fn matches_a_vecdeque_model_with_spread_blocks(
        start in start_position(),
        ops in prop::collection::vec(op(64), 0..if cfg!(miri) { 40 } else { 200 }),
    ) {
        prop_assert_eq!(Ring::<[u32; 16], 64>::LAYOUT.block_spread, 16);
        run_model::<[u32; 16], 64>(start, &ops)?;
    }
}

#[test]
fn read_chunk_borrows_in_place_and_commits_once() {
    let mut ring = Ring::<String, 8>::new();
    let (mut tx, mut rx) = ring.split();
    assert_eq!(tx.push_iter((0..6).map(|i| i.to_string())), 6);
    {
        let chunk = rx.read_chunk(4);
        assert_eq!(chunk.len(), 4);
        assert_eq!(chunk.get(3).map(String::as_str), Some("3"));
        assert_eq!(chunk.get(4), None);
        let seen: Vec<&str> = chunk.iter().map(String::as_str).collect();
        assert_eq!(seen, ["0", "1", "2", "3"]);
        // Nothing is removed until commit: the producer still sees 2 free slots.
        chunk.commit(3);
    }
    assert_eq!(tx.free_len(), 5);
    assert_eq!(rx.pop().as_deref(), Some("3"));
    // A chunk asking for more than is ready holds what is ready; commit_all removes it all.
    let chunk = rx.read_chunk(100);
    assert_eq!(chunk.len(), 2);
    chunk.commit_all();
    assert!(rx.is_empty());
    assert!(rx.read_chunk(4).is_empty());
    assert_eq!(tx.free_len(), 8);
}

#[test]
fn a_leaked_read_chunk_removes_nothing_and_drops_nothing_twice() {
    let drops = drop_table(3);
    {
        let mut ring = Ring::<Tracked<'_>, 4>::new();
        let (mut tx, mut rx) = ring.split();
        for id in 0..3 {
            assert!(tx.push(Tracked { id, drops: &drops }).is_ok());
        }
        mem::forget(rx.read_chunk(3));
        assert_eq!(
            drop_counts(&drops),
            [0, 0, 0],
            "a leaked chunk drops nothing"
        );
        assert_eq!(rx.len(), 3, "a leaked chunk removes nothing");
        rx.read_chunk(3).commit(2);
        assert_eq!(
            drop_counts(&drops),
            [1, 1, 0],
            "commit drops the committed elements in place"
        );
    }
    assert_eq!(
        drop_counts(&drops),
        [1, 1, 1],
        "the ring drops what is left, once"
    );
}
