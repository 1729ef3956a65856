//! The hot path allocates nothing: sending and receiving through a channel (and through the
//! in-process rings underneath) is run under a counting global allocator, and the count of
//! allocations made during the loops must be exactly zero.
//!
//! (The other half of the hot-path promise, no system call, is checked by `tests/wait.rs`: a
//! sender whose receiver is not parked makes no `futex_wake`.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use shm_channel::{Channel, ChannelOptions, End, PodReceiver, PodSender};
use spsc_core::{MessageReceiver, MessageRing, MessageSender, Ring, SendSlot};

/// Counts the allocations of threads that have counting switched on (see `allocations_during`):
/// per thread, so tests running in parallel do not count each other's.
struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: during thread teardown the locals may be gone; nothing is being measured then.
    let _ = COUNTING.try_with(|counting| {
        if counting.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counting is a side
// effect on const-initialised thread locals, which allocates nothing.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: forwarded unchanged; `ptr` and `layout` are the caller's, from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Runs `body` on this thread with allocation counting on, and returns how many allocations it
/// made.
fn allocations_during(body: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    body();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn the_counter_sees_allocations() {
    // Guards against a vacuous pass: the same measurement does see a real allocation.
    let count = allocations_during(|| drop(std::hint::black_box(vec![1u8; 64])));
    assert_eq!(count, 1);
}

/// A `#[repr(C)]` message for the typed path.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Quote {
    instrument: u64,
    price: i64,
    size: u32,
    side: u32,
}

#[test]
fn channel_send_and_receive_allocate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = ChannelOptions::new().dir(dir.path());
    let a = Channel::<4096>::create_or_open("hot", End::A, &options).unwrap();
    let b = Channel::<4096>::create_or_open("hot", End::B, &options).unwrap();
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();
    let payload = [7u8; 100];
    let mut checksum = 0u64;
    let count = allocations_during(|| {
        for round in 0..10_000u32 {
            // Bytes, written in place.
            let mut slot = tx.alloc(100, 1).unwrap();
            slot.payload_mut().copy_from_slice(&payload);
            slot.push();
            // A typed message, read back in place.
            let quote = Quote {
                instrument: u64::from(round),
                price: -5,
                size: 3,
                side: 1,
            };
            tx.send_pod(2, &quote).unwrap();
            let message = rx.front().unwrap();
            checksum += message.payload().iter().map(|&b| u64::from(b)).sum::<u64>();
            rx.pop().unwrap();
            let (tag, got) = rx.front_pod::<Quote>().unwrap();
            assert_eq!((tag, got.instrument), (2, u64::from(round)));
            rx.pop().unwrap();
        }
    });
    assert_eq!(checksum, 10_000 * 700);
    assert_eq!(count, 0, "the channel's send/receive path allocated");
}

#[test]
fn core_rings_allocate_nothing() {
    let mut ring = Box::new(MessageRing::<4096>::new());
    let mut fixed = Box::new(Ring::<u64, 64>::new());
    let (mut tx, mut rx) = ring.split();
    let (mut ftx, mut frx) = fixed.split();
    let mut buf = [0u64; 16];
    let count = allocations_during(|| {
        for round in 0..10_000u64 {
            tx.send(3, &round.to_le_bytes()).unwrap();
            let value = rx.recv_with(|m| u64::from_le_bytes(m.payload().try_into().unwrap()));
            assert_eq!(value, Ok(round));
            ftx.push(round).unwrap();
            assert_eq!(ftx.push_slice(&[round; 8]), 8);
            assert_eq!(frx.pop(), Some(round));
            assert_eq!(frx.pop_slice(&mut buf), 8);
        }
    });
    assert_eq!(count, 0, "the rings' push/pop paths allocated");
}
