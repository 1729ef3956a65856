//! Machinery shared by the two benchmark binaries (`rings`, criterion; `report`, interleaved
//! rounds): thread pinning, the contenders behind one trait, the raw floors (two-line and
//! same-bytes), and the ping-pong and streaming drivers. Every contender runs through the very same driver code, so a
//! difference between two of them is a difference between the queues.
// Each bench binary uses a different subset of this module.
#![allow(dead_code)]

use std::cell::UnsafeCell;
use std::hint::black_box;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use spsc_core::{
    CachePadded, DenseRing, MessageReceiver, MessageRing, MessageSender, Ring, SendSlot,
};

/// Element capacity of every element ring (heapless holds one less: its `N` is `CAP`).
pub const CAP: usize = 1024;
/// Byte capacity of the message rings: 64 KiB, about the footprint of `Ring<[u8; 64], CAP>`.
pub const MSG_CAP: usize = 1 << 16;
/// Elements per batch call in the batch-streaming scenarios.
pub const BATCH: usize = 64;

// ---------------------------------------------------------------------------------------------
// Thread pinning
// ---------------------------------------------------------------------------------------------

/// The two CPUs the benchmark threads are pinned to, chosen once from the process's allowed set
/// (before any thread is pinned, since pinning would shrink the set seen afterwards).
pub fn cpu_pair() -> Option<(core_affinity::CoreId, core_affinity::CoreId)> {
    static PAIR: OnceLock<Option<(core_affinity::CoreId, core_affinity::CoreId)>> = OnceLock::new();
    *PAIR.get_or_init(|| {
        let ids = core_affinity::get_core_ids().unwrap_or_default();
        let pair = match ids.as_slice() {
            [a, b, ..] => Some((*a, *b)),
            _ => None,
        };
        match pair {
            Some((a, b)) => eprintln!(
                "spsc-core benches: pinning the two sides to CPUs {} and {} (of {} allowed)",
                a.id,
                b.id,
                ids.len()
            ),
            None => eprintln!(
                "spsc-core benches: NOTE: fewer than two CPUs available ({}); threads are not \
                 pinned and both sides share a core, so the numbers mean little",
                ids.len()
            ),
        }
        pair
    })
}

fn pin(core: Option<core_affinity::CoreId>) {
    if let Some(core) = core {
        if !core_affinity::set_for_current(core) {
            eprintln!(
                "spsc-core benches: NOTE: could not pin a thread to CPU {}",
                core.id
            );
        }
    }
}

/// Runs `first` and `second` on two fresh threads pinned to the two CPUs of [`cpu_pair`], and
/// returns both results. Fresh threads each trial keep the pinning of the caller untouched.
pub fn run_pinned<A, B, RA, RB>(first: A, second: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    let pair = cpu_pair();
    std::thread::scope(|scope| {
        let a = scope.spawn(move || {
            pin(pair.map(|p| p.0));
            first()
        });
        let b = scope.spawn(move || {
            pin(pair.map(|p| p.1));
            second()
        });
        (
            a.join().expect("benchmark thread panicked"),
            b.join().expect("benchmark thread panicked"),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------------------

/// An element type carried through the element rings: `u64` or `[u8; 64]`.
pub trait Payload: Copy + Send + 'static {
    /// Human-readable size, for names.
    const LABEL: &'static str;
    /// Size in bytes.
    const SIZE: usize;
    /// A value carrying `seq` (every 8-byte word of it, so the whole value is written).
    fn from_seq(seq: u64) -> Self;
    /// Whether every 8-byte word of the value is `seq`. Every receipt in every driver checks
    /// this, so the whole value is loaded and compared, for every contender and floor alike.
    fn holds(&self, seq: u64) -> bool;
}

impl Payload for u64 {
    const LABEL: &'static str = "8 B";
    const SIZE: usize = 8;
    #[inline(always)]
    fn from_seq(seq: u64) -> Self {
        seq
    }
    #[inline(always)]
    fn holds(&self, seq: u64) -> bool {
        *self == seq
    }
}

impl Payload for [u8; 64] {
    const LABEL: &'static str = "64 B";
    const SIZE: usize = 64;
    #[inline(always)]
    fn from_seq(seq: u64) -> Self {
        let mut bytes = [0u8; 64];
        for word in bytes.chunks_exact_mut(8) {
            word.copy_from_slice(&seq.to_le_bytes());
        }
        bytes
    }
    #[inline(always)]
    fn holds(&self, seq: u64) -> bool {
        // Every word is compared: checking only the first would let the compiler skip loading
        // the rest of a popped value, and its second cache line would never move.
        payload_holds(self, seq)
    }
}

// ---------------------------------------------------------------------------------------------
// Contenders
// ---------------------------------------------------------------------------------------------

/// The producing half of a contender.
pub trait Tx<T>: Send {
    /// Pushes one value, handing it back when the queue is full.
    fn try_push(&mut self, value: T) -> Result<(), T>;
    /// Pushes a prefix of `items` (as many as fit), returning how many. Contenders without a
    /// batch API loop over single pushes.
    fn push_batch(&mut self, items: &[T]) -> usize;
}

/// The consuming half of a contender.
pub trait Rx<T>: Send {
    /// Pops one value, if any.
    fn try_pop(&mut self) -> Option<T>;
    /// Pops up to `out.len()` values into `out`, returning how many. Contenders without a batch
    /// API loop over single pops.
    fn pop_batch(&mut self, out: &mut [T]) -> usize;
}

/// A queue under test: owns its storage and splits into a [`Tx`] and an [`Rx`].
pub trait Channel<T: Payload>: Sized {
    /// Name in the tables.
    const NAME: &'static str;
    /// Whether `push_batch`/`pop_batch` use a real batch API (otherwise single ops, marked).
    const NATIVE_BATCH: bool;
    /// Whether this is one of the reference crates (as opposed to ours).
    const REFERENCE: bool;
    /// Producer half.
    type Tx<'a>: Tx<T>
    where
        Self: 'a;
    /// Consumer half.
    type Rx<'a>: Rx<T>
    where
        Self: 'a;
    /// A fresh, empty queue of [`CAP`] elements (boxed: some are large).
    fn create() -> Box<Self>;
    /// Both halves.
    fn split(&mut self) -> (Self::Tx<'_>, Self::Rx<'_>);
}

fn single_push_loop<T: Copy>(items: &[T], mut push: impl FnMut(T) -> bool) -> usize {
    let mut n = 0;
    for &item in items {
        if !push(item) {
            break;
        }
        n += 1;
    }
    n
}

fn single_pop_loop<T>(out: &mut [T], mut pop: impl FnMut() -> Option<T>) -> usize {
    let mut n = 0;
    for slot in out.iter_mut() {
        match pop() {
            Some(value) => *slot = value,
            None => break,
        }
        n += 1;
    }
    n
}

// --- ours: spsc_core::Ring and spsc_core::DenseRing (the same calls) ---

/// Puts one of our element rings behind the driver traits by forwarding to its own methods.
macro_rules! our_element_ring {
    ($ring:ident, $producer:ident, $consumer:ident, $name:literal) => {
        impl<T: Payload, const N: usize> Tx<T> for spsc_core::$producer<'_, T, N> {
            #[inline(always)]
            fn try_push(&mut self, value: T) -> Result<(), T> {
                self.push(value).map_err(|full| full.0)
            }
            #[inline(always)]
            fn push_batch(&mut self, items: &[T]) -> usize {
                self.push_slice(items)
            }
        }

        impl<T: Payload, const N: usize> Rx<T> for spsc_core::$consumer<'_, T, N> {
            #[inline(always)]
            fn try_pop(&mut self) -> Option<T> {
                self.pop()
            }
            #[inline(always)]
            fn pop_batch(&mut self, out: &mut [T]) -> usize {
                self.pop_slice(out)
            }
        }

        impl<T: Payload> Channel<T> for $ring<T, CAP> {
            const NAME: &'static str = $name;
            const NATIVE_BATCH: bool = true;
            const REFERENCE: bool = false;
            type Tx<'a> = spsc_core::$producer<'a, T, CAP>;
            type Rx<'a> = spsc_core::$consumer<'a, T, CAP>;
            fn create() -> Box<Self> {
                Box::new($ring::new())
            }
            fn split(&mut self) -> (Self::Tx<'_>, Self::Rx<'_>) {
                $ring::split(self)
            }
        }
    };
}

our_element_ring!(Ring, Producer, Consumer, "spsc_core::Ring");
our_element_ring!(
    DenseRing,
    DenseProducer,
    DenseConsumer,
    "spsc_core::DenseRing"
);

/// Slots of [`SmallRing`].
pub const SMALL_CAP: usize = 64;

/// Our `Ring` with [`SMALL_CAP`] slots instead of [`CAP`]: a ping-pong walks through every slot
/// of a ring in turn, and 1024 slots of 64-byte elements (68 KiB a ring, two rings) do not stay
/// in a core's L1 while 64 do, so the round trip shows what the walk's footprint costs.
pub struct SmallRing<T>(Ring<T, SMALL_CAP>);

impl<T: Payload> Channel<T> for SmallRing<T> {
    const NAME: &'static str = "spsc_core::Ring, 64 slots";
    const NATIVE_BATCH: bool = true;
    const REFERENCE: bool = false;
    type Tx<'a> = spsc_core::Producer<'a, T, SMALL_CAP>;
    type Rx<'a> = spsc_core::Consumer<'a, T, SMALL_CAP>;
    fn create() -> Box<Self> {
        Box::new(Self(Ring::new()))
    }
    fn split(&mut self) -> (Self::Tx<'_>, Self::Rx<'_>) {
        self.0.split()
    }
}

// --- rtrb ---

/// `rtrb::RingBuffer`, whose halves are created together and owned.
pub struct Rtrb<T>(Option<(rtrb::Producer<T>, rtrb::Consumer<T>)>);

impl<T: Payload> Tx<T> for rtrb::Producer<T> {
    #[inline(always)]
    fn try_push(&mut self, value: T) -> Result<(), T> {
        self.push(value)
            .map_err(|rtrb::PushError::Full(value)| value)
    }
    #[inline(always)]
    fn push_batch(&mut self, items: &[T]) -> usize {
        // Built on `write_chunk_uninit`: one index load, a copy, one index store.
        self.push_partial_slice(items).0.len()
    }
}

impl<T: Payload> Rx<T> for rtrb::Consumer<T> {
    #[inline(always)]
    fn try_pop(&mut self) -> Option<T> {
        self.pop().ok()
    }
    #[inline(always)]
    fn pop_batch(&mut self, out: &mut [T]) -> usize {
        // Built on `read_chunk`.
        self.pop_partial_slice(out).0.len()
    }
}

impl<T: Payload> Channel<T> for Rtrb<T> {
    const NAME: &'static str = "rtrb";
    const NATIVE_BATCH: bool = true;
    const REFERENCE: bool = true;
    type Tx<'a> = rtrb::Producer<T>;
    type Rx<'a> = rtrb::Consumer<T>;
    fn create() -> Box<Self> {
        Box::new(Self(Some(rtrb::RingBuffer::new(CAP))))
    }
    fn split(&mut self) -> (Self::Tx<'_>, Self::Rx<'_>) {
        self.0.take().expect("split once")
    }
}

// --- heapless::spsc ---

impl<T: Payload> Tx<T> for heapless::spsc::Producer<'_, T> {
    #[inline(always)]
    fn try_push(&mut self, value: T) -> Result<(), T> {
        self.enqueue(value)
    }
    #[inline(always)]
    fn push_batch(&mut self, items: &[T]) -> usize {
        single_push_loop(items, |item| self.enqueue(item).is_ok())
    }
}

impl<T: Payload> Rx<T> for heapless::spsc::Consumer<'_, T> {
    #[inline(always)]
    fn try_pop(&mut self) -> Option<T> {
        self.dequeue()
    }
    #[inline(always)]
    fn pop_batch(&mut self, out: &mut [T]) -> usize {
        single_pop_loop(out, || self.dequeue())
    }
}

impl<T: Payload> Channel<T> for heapless::spsc::Queue<T, CAP> {
    const NAME: &'static str = "heapless::spsc";
    const NATIVE_BATCH: bool = false;
    const REFERENCE: bool = true;
    type Tx<'a> = heapless::spsc::Producer<'a, T>;
    type Rx<'a> = heapless::spsc::Consumer<'a, T>;
    fn create() -> Box<Self> {
        Box::new(heapless::spsc::Queue::new())
    }
    fn split(&mut self) -> (Self::Tx<'_>, Self::Rx<'_>) {
        heapless::spsc::Queue::split(self)
    }
}

// --- crossbeam_queue::ArrayQueue (an MPMC queue used as SPSC) ---

/// One side of a shared `ArrayQueue`.
pub struct Crossbeam<'a, T>(&'a ArrayQueue<T>);

impl<T: Payload> Tx<T> for Crossbeam<'_, T> {
    #[inline(always)]
    fn try_push(&mut self, value: T) -> Result<(), T> {
        self.0.push(value)
    }
    #[inline(always)]
    fn push_batch(&mut self, items: &[T]) -> usize {
        single_push_loop(items, |item| self.0.push(item).is_ok())
    }
}

impl<T: Payload> Rx<T> for Crossbeam<'_, T> {
    #[inline(always)]
    fn try_pop(&mut self) -> Option<T> {
        self.0.pop()
    }
    #[inline(always)]
    fn pop_batch(&mut self, out: &mut [T]) -> usize {
        single_pop_loop(out, || self.0.pop())
    }
}

impl<T: Payload> Channel<T> for ArrayQueue<T> {
    const NAME: &'static str = "crossbeam ArrayQueue";
    const NATIVE_BATCH: bool = false;
    const REFERENCE: bool = true;
    type Tx<'a> = Crossbeam<'a, T>;
    type Rx<'a> = Crossbeam<'a, T>;
    fn create() -> Box<Self> {
        Box::new(ArrayQueue::new(CAP))
    }
    fn split(&mut self) -> (Self::Tx<'_>, Self::Rx<'_>) {
        (Crossbeam(self), Crossbeam(self))
    }
}

// --- the batch streaming floor: a bare shared array and two indices ---

/// The least a bounded SPSC queue built on ordinary (cached) stores does per batch, as the
/// two-line ping-pong is the least a round trip does: the producer copies the items into a shared
/// array (one `memcpy`, two at the array's end) and publishes one index with a Release store;
/// the consumer copies them out and publishes its own index. Each side caches the other's index.
/// No handles, no checks, no shared-memory header: what remains is the lines the bytes move
/// through, so a queue level with it has nothing left to take out of a batch.
///
/// The slots start at a 128-byte boundary (as `DenseRing`'s do), so a 64-byte item fills
/// exactly one cache line.
#[repr(C, align(128))]
pub struct CopyFloor<T> {
    /// Items published by the producer (written only by it).
    tail: CachePadded<AtomicUsize>,
    /// Items released by the consumer (written only by it).
    head: CachePadded<AtomicUsize>,
    slots: [UnsafeCell<MaybeUninit<T>>; CAP],
}

// SAFETY: the producer writes only slots in `tail..head + CAP` (free: the consumer has released
// them, Acquire on `head`) and the consumer reads only slots in `head..tail` (published: Release
// on `tail`), so no slot is written and accessed at once; `T: Send` moves the items across.
unsafe impl<T: Send> Sync for CopyFloor<T> {}

/// The producer side of a [`CopyFloor`].
pub struct CopyFloorTx<'a, T> {
    floor: &'a CopyFloor<T>,
    tail: usize,
    head_seen: usize,
}

/// The consumer side of a [`CopyFloor`].
pub struct CopyFloorRx<'a, T> {
    floor: &'a CopyFloor<T>,
    head: usize,
    tail_seen: usize,
}

impl<T> CopyFloor<T> {
    fn slot(&self, index: usize) -> *mut T {
        self.slots[index].get().cast()
    }
}

impl<T: Payload> Tx<T> for CopyFloorTx<'_, T> {
    #[inline(always)]
    fn try_push(&mut self, value: T) -> Result<(), T> {
        match self.push_batch(&[value]) {
            1 => Ok(()),
            _ => Err(value),
        }
    }
    #[inline(always)]
    fn push_batch(&mut self, items: &[T]) -> usize {
        let mut free = CAP - (self.tail - self.head_seen);
        if free < items.len() {
            self.head_seen = self.floor.head.load(Ordering::Acquire);
            free = CAP - (self.tail - self.head_seen);
        }
        let count = free.min(items.len());
        let start = self.tail % CAP;
        let first = count.min(CAP - start);
        // SAFETY: slots `tail..tail + count` are free (at most `free`, counted from the
        // consumer's released index) and the runs `start..start + first` and `0..count - first`
        // lie inside the array; `items` is a separate borrow.
        unsafe {
            std::ptr::copy_nonoverlapping(items.as_ptr(), self.floor.slot(start), first);
            std::ptr::copy_nonoverlapping(
                items[first..].as_ptr(),
                self.floor.slot(0),
                count - first,
            );
        }
        self.tail += count;
        self.floor.tail.store(self.tail, Ordering::Release);
        count
    }
}

impl<T: Payload> Rx<T> for CopyFloorRx<'_, T> {
    #[inline(always)]
    fn try_pop(&mut self) -> Option<T> {
        let mut one = [T::from_seq(0)];
        (self.pop_batch(&mut one) == 1).then_some(one[0])
    }
    #[inline(always)]
    fn pop_batch(&mut self, out: &mut [T]) -> usize {
        let mut ready = self.tail_seen - self.head;
        if ready < out.len() {
            self.tail_seen = self.floor.tail.load(Ordering::Acquire);
            ready = self.tail_seen - self.head;
        }
        let count = ready.min(out.len());
        let start = self.head % CAP;
        let first = count.min(CAP - start);
        // SAFETY: slots `head..head + count` are published (at most `ready`, counted from the
        // producer's Release index) and not written until released below; the runs lie inside
        // the array, and `out` is a separate exclusive borrow.
        unsafe {
            std::ptr::copy_nonoverlapping(self.floor.slot(start), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(
                self.floor.slot(0),
                out[first..].as_mut_ptr(),
                count - first,
            );
        }
        self.head += count;
        self.floor.head.store(self.head, Ordering::Release);
        count
    }
}

impl<T: Payload> Channel<T> for CopyFloor<T> {
    const NAME: &'static str = "floor (one copy and one index store per batch)";
    const NATIVE_BATCH: bool = true;
    const REFERENCE: bool = false;
    type Tx<'a> = CopyFloorTx<'a, T>;
    type Rx<'a> = CopyFloorRx<'a, T>;
    fn create() -> Box<Self> {
        Box::new(Self {
            tail: CachePadded(AtomicUsize::new(0)),
            head: CachePadded(AtomicUsize::new(0)),
            slots: std::array::from_fn(|_| UnsafeCell::new(MaybeUninit::uninit())),
        })
    }
    fn split(&mut self) -> (Self::Tx<'_>, Self::Rx<'_>) {
        let floor = &*self;
        (
            CopyFloorTx {
                floor,
                tail: 0,
                head_seen: 0,
            },
            CopyFloorRx {
                floor,
                head: 0,
                tail_seen: 0,
            },
        )
    }
}

/// The ring type of ours for element payloads.
pub type Ours<T> = Ring<T, CAP>;
/// Our dense (index-published) element ring at the common capacity.
pub type OursDense<T> = DenseRing<T, CAP>;
/// The reference heapless queue type.
pub type Heapless<T> = heapless::spsc::Queue<T, CAP>;
/// The message ring used throughout, with `L` lanes (1 unless named).
pub type MsgRing<const L: usize = 1> = MessageRing<MSG_CAP, L>;
/// Lanes of the low-latency message ring configuration the benches show next to the default.
pub const LANES: usize = 16;

// ---------------------------------------------------------------------------------------------
// Timing of individual round trips
// ---------------------------------------------------------------------------------------------

/// How the ping-pong sender times its round trips. [`NoTimer`] for criterion (which times the
/// whole run), a histogram-recording timer for the report.
pub trait RoundTripTimer: Send {
    /// Round trips per timed group (1: each one timed on its own).
    fn group(&self) -> u64;
    /// A timestamp before a group.
    fn start(&mut self) -> u64;
    /// Called after a group of [`group`](Self::group) round trips that started at `t0`.
    fn stop(&mut self, t0: u64);
}

/// Times nothing.
pub struct NoTimer;

impl RoundTripTimer for NoTimer {
    #[inline(always)]
    fn group(&self) -> u64 {
        1
    }
    #[inline(always)]
    fn start(&mut self) -> u64 {
        0
    }
    #[inline(always)]
    fn stop(&mut self, _t0: u64) {}
}

// ---------------------------------------------------------------------------------------------
// Ping-pong drivers
// ---------------------------------------------------------------------------------------------

/// Round trips done before timing starts in each trial (caches, branch predictors, page faults).
pub const WARMUP_ROUND_TRIPS: u64 = 2_000;

/// The sender's side of every ping-pong driver: `warmup` untimed round trips, then `groups`
/// timed groups of `timer.group()` round trips, with sequence numbers counting up from `first`.
/// Returns the time of the timed part and the timer. Generic, so each driver's round trip is
/// inlined into its own copy of the loop: nothing is called through a pointer while timing.
#[inline(always)]
fn timed_round_trips<M: RoundTripTimer>(
    first: u64,
    warmup: u64,
    groups: u64,
    mut timer: M,
    mut round_trip: impl FnMut(u64),
) -> (Duration, M) {
    let group = timer.group();
    for seq in first..first + warmup {
        round_trip(seq);
    }
    let begin = Instant::now();
    let mut seq = first + warmup;
    for _ in 0..groups {
        let t0 = timer.start();
        for _ in 0..group {
            round_trip(seq);
            seq += 1;
        }
        timer.stop(t0);
    }
    (begin.elapsed(), timer)
}

/// Ping-pong through two element queues: the sender pushes `seq` into A and waits for it on B;
/// the echo thread pops from A and pushes it back into B. Runs `warmup + n` round trips (n
/// rounded up to whole timer groups) and returns the time of the last `n` with the timer.
pub fn ping_pong<T: Payload, C: Channel<T>, M: RoundTripTimer>(
    warmup: u64,
    n: u64,
    timer: M,
) -> (Duration, M) {
    let mut a = C::create();
    let mut b = C::create();
    let (mut a_tx, mut a_rx) = a.split();
    let (mut b_tx, mut b_rx) = b.split();
    let group = timer.group();
    let groups = n.div_ceil(group);
    let total = warmup + groups * group;
    let barrier = Barrier::new(2);
    // Each thread owns its handles (moved in), as a real user's threads would: handles
    // left in this frame would share cache lines and slow every contender.
    let barrier = &barrier;
    let (sender, ()) = run_pinned(
        move || {
            barrier.wait();
            let round_trip = |seq: u64| {
                let mut value = T::from_seq(seq);
                while let Err(back) = a_tx.try_push(value) {
                    value = back;
                }
                loop {
                    if let Some(echo) = b_rx.try_pop() {
                        assert!(echo.holds(seq), "ping-pong echo out of order or torn");
                        break;
                    }
                }
            };
            timed_round_trips(0, warmup, groups, timer, round_trip)
        },
        move || {
            barrier.wait();
            for seq in 0..total {
                let mut value = loop {
                    if let Some(value) = a_rx.try_pop() {
                        break value;
                    }
                };
                assert!(value.holds(seq), "ping-pong ping out of order or torn");
                while let Err(back) = b_tx.try_push(value) {
                    value = back;
                }
            }
        },
    );
    sender
}

/// The two-line floor: two `AtomicU64`s, each alone on its own 128-byte-aligned line. The sender
/// stores `seq` into the first and waits for the echo thread to store it into the second: one
/// line moves each way, the least any hand-off of an 8-byte message can move.
pub fn ping_pong_floor<M: RoundTripTimer>(warmup: u64, n: u64, timer: M) -> (Duration, M) {
    let ping = CachePadded(AtomicU64::new(0));
    let pong = CachePadded(AtomicU64::new(0));
    let group = timer.group();
    let groups = n.div_ceil(group);
    let total = warmup + groups * group;
    let barrier = Barrier::new(2);
    // Each thread owns its handles (moved in), as a real user's threads would: handles
    // left in this frame would share cache lines and slow every contender.
    let barrier = &barrier;
    let ping = &ping;
    let pong = &pong;
    let (sender, ()) = run_pinned(
        move || {
            barrier.wait();
            let round_trip = |seq: u64| {
                ping.store(seq, Ordering::Release);
                while pong.load(Ordering::Acquire) != seq {}
            };
            // From 1: the echo line starts at 0, which must not pass for an echo.
            timed_round_trips(1, warmup, groups, timer, round_trip)
        },
        move || {
            barrier.wait();
            for seq in 1..=total {
                while ping.load(Ordering::Acquire) != seq {}
                pong.store(seq, Ordering::Release);
            }
        },
    );
    sender
}

/// One direction of the same-bytes floor: the payload on a line (or lines) of its own and the
/// sequence word on a line of its own, each 128-byte aligned so that the adjacent-line
/// prefetcher does not pair them.
#[repr(C)]
struct BytesLeg<T> {
    payload: CachePadded<UnsafeCell<T>>,
    seq: CachePadded<AtomicU64>,
}

// SAFETY: the payload is written only by its leg's writer, and only before it publishes the
// next `seq` (Release); the reader reads it only after seeing that `seq` (Acquire) and before it
// answers on the other leg, which the writer waits for (Acquire) before writing the payload
// again. So no payload access overlaps a write; `T: Send` moves the values across.
unsafe impl<T: Send> Sync for BytesLeg<T> {}

impl<T: Payload> BytesLeg<T> {
    fn new() -> Self {
        Self {
            payload: CachePadded(UnsafeCell::new(T::from_seq(0))),
            seq: CachePadded(AtomicU64::new(0)),
        }
    }

    /// Writes the payload for `seq`, then publishes `seq` (the writer's side).
    #[inline(always)]
    fn send(&self, value: T, seq: u64) {
        // SAFETY: only this leg's writer calls `send`, and only once the reader has answered the
        // previous `seq` on the other leg (see the `Sync` impl): nobody reads the payload now.
        unsafe { self.payload.0.get().write(value) };
        self.seq.store(seq, Ordering::Release);
    }

    /// Waits for `seq`, then reads the payload and checks every word (the reader's side).
    #[inline(always)]
    fn receive(&self, seq: u64) -> T {
        while self.seq.load(Ordering::Acquire) != seq {}
        // SAFETY: `seq` was published (Acquire) after its payload was written, and the writer
        // does not write again until this side answers on the other leg.
        let value = unsafe { self.payload.0.get().read() };
        assert!(
            value.holds(seq),
            "same-bytes floor: payload out of order or torn"
        );
        value
    }
}

/// The same-bytes floor: a raw ping-pong that moves a whole `T` and a sequence word each way,
/// the least any transport of a `T`-sized message must move. Each direction has the payload on
/// its own line(s) and the sequence word on its own line, written after the payload with Release
/// and read with Acquire; the payload is then read and every word checked, as every contender's
/// receipts are. For a 64-byte `T` that is two lines each way, where [`ping_pong_floor`] moves
/// one: the extra line is a cost of the bytes, not of any queue.
///
/// With `slots` above 1 the exchange walks: round trip `k` uses pair `k % slots` of `slots`
/// such pairs per direction, as a ring of that many slots does, so its lines are not the ones
/// the last round trip used. That is still no queue (no indices, no checks of room), only the
/// memory a ring's ping-pong cycles through; with one slot it is the floor.
pub fn ping_pong_same_bytes_floor<T: Payload, M: RoundTripTimer>(
    slots: usize,
    warmup: u64,
    n: u64,
    timer: M,
) -> (Duration, M) {
    let legs = || {
        (0..slots)
            .map(|_| BytesLeg::<T>::new())
            .collect::<Box<[_]>>()
    };
    let (ping, pong) = (legs(), legs());
    let group = timer.group();
    let groups = n.div_ceil(group);
    let total = warmup + groups * group;
    let barrier = Barrier::new(2);
    let barrier = &barrier;
    let ping = &ping;
    let pong = &pong;
    let (sender, ()) = run_pinned(
        move || {
            barrier.wait();
            let round_trip = |seq: u64| {
                let slot = (seq % slots as u64) as usize;
                ping[slot].send(T::from_seq(seq), seq);
                pong[slot].receive(seq);
            };
            // From 1: the sequence words start at 0, which must not pass for a message.
            timed_round_trips(1, warmup, groups, timer, round_trip)
        },
        move || {
            barrier.wait();
            for seq in 1..=total {
                let slot = (seq % slots as u64) as usize;
                let value = ping[slot].receive(seq);
                pong[slot].send(value, seq);
            }
        },
    );
    sender
}

/// Fills a message payload with `seq` in every 8-byte word (the whole payload is written, as an
/// element ring's value is).
#[inline(always)]
pub fn fill_payload(payload: &mut [u8], seq: u64) {
    for word in payload.chunks_exact_mut(8) {
        word.copy_from_slice(&seq.to_le_bytes());
    }
}

/// Whether every 8-byte word of a received payload is `seq`: the whole payload is loaded and
/// compared, as every element contender's value is ([`Payload::holds`]). The words are combined
/// without short-circuiting, so the check costs the same whatever the words hold.
#[inline(always)]
pub fn payload_holds(payload: &[u8], seq: u64) -> bool {
    let want = seq.to_le_bytes();
    payload
        .chunks_exact(8)
        .fold(!payload.is_empty(), |ok, word| ok & (word == want))
}

/// Ping-pong through two [`MsgRing`]s of `L` lanes with `len`-byte payloads (a multiple of 8, at
/// least 8). The echo thread copies the payload from A's front into a slot allocated on B,
/// pushes it, then pops A.
pub fn ping_pong_message<const L: usize, M: RoundTripTimer>(
    len: u32,
    warmup: u64,
    n: u64,
    timer: M,
) -> (Duration, M) {
    let mut a: Box<MsgRing<L>> = Box::new(MessageRing::new());
    let mut b: Box<MsgRing<L>> = Box::new(MessageRing::new());
    let (mut a_tx, mut a_rx) = a.split();
    let (mut b_tx, mut b_rx) = b.split();
    let group = timer.group();
    let groups = n.div_ceil(group);
    let total = warmup + groups * group;
    let barrier = Barrier::new(2);
    // Each thread owns its handles (moved in), as a real user's threads would: handles
    // left in this frame would share cache lines and slow every contender.
    let barrier = &barrier;
    let (sender, ()) = run_pinned(
        move || {
            barrier.wait();
            let round_trip = |seq: u64| {
                let mut slot = loop {
                    if let Ok(slot) = a_tx.alloc(len, 1) {
                        break slot;
                    }
                };
                fill_payload(slot.payload_mut(), seq);
                slot.push();
                loop {
                    if let Ok(message) = b_rx.front() {
                        assert!(payload_holds(message.payload(), seq), "echo out of order");
                        break;
                    }
                }
                b_rx.pop().expect("front was there");
            };
            timed_round_trips(0, warmup, groups, timer, round_trip)
        },
        move || {
            barrier.wait();
            for seq in 0..total {
                let message = loop {
                    if let Ok(message) = a_rx.front() {
                        break message;
                    }
                };
                assert!(payload_holds(message.payload(), seq), "ping out of order");
                let mut slot = loop {
                    if let Ok(slot) = b_tx.alloc(len, message.tag()) {
                        break slot;
                    }
                };
                slot.payload_mut().copy_from_slice(message.payload());
                slot.push();
                a_rx.pop().expect("front was there");
            }
        },
    );
    sender
}

// ---------------------------------------------------------------------------------------------
// Streaming drivers
// ---------------------------------------------------------------------------------------------

/// Items the producer pushes between two looks at the clock (see [`Budget`]).
const CLOCK_EVERY: u64 = 4096;

/// Bounds a streaming trial: the producer stops early once `budget` has passed (checked every
/// [`CLOCK_EVERY`] items) and tells the consumer how many it pushed. On a shared machine a
/// descheduled side can slow a trial a hundredfold; this keeps a run's length predictable.
struct Budget {
    budget: Duration,
    /// Items the consumer must receive: `n`, or fewer once the producer stopped early.
    limit: CachePadded<AtomicU64>,
}

impl Budget {
    fn new(n: u64, budget: Duration) -> Self {
        Self {
            budget,
            limit: CachePadded(AtomicU64::new(n)),
        }
    }

    /// Called by the producer after `pushed` items; `true` means stop now.
    #[inline(always)]
    fn expired(&self, begin: Instant, pushed: u64) -> bool {
        if !pushed.is_multiple_of(CLOCK_EVERY) || begin.elapsed() < self.budget {
            return false;
        }
        self.limit.store(pushed, Ordering::Relaxed);
        true
    }

    /// What the consumer must receive as far as it knows now (one L1 hit normally).
    #[inline(always)]
    fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }
}

/// One-way streaming: the producer pushes up to `n` values as fast as it can (spinning on full),
/// stopping early after `budget`; the consumer pops and checks them. Returns the items moved and
/// the time from the common start until the consumer has the last one. `batch` uses
/// `push_batch`/`pop_batch` with [`BATCH`]-element buffers.
pub fn stream<T: Payload, C: Channel<T>>(n: u64, budget: Duration, batch: bool) -> (u64, Duration) {
    let mut queue = C::create();
    let (mut tx, mut rx) = queue.split();
    let barrier = Barrier::new(2);
    let budget = Budget::new(n, budget);
    // Each thread owns its handles (moved in), as a real user's threads would: handles
    // left in this frame would share cache lines and slow every contender.
    let barrier = &barrier;
    let budget = &budget;
    let (begin, (items, end)) = run_pinned(
        move || {
            barrier.wait();
            let begin = Instant::now();
            if batch {
                let mut buf = [T::from_seq(0); BATCH];
                let mut next = 0u64;
                while next < n && !budget.expired(begin, next) {
                    let len = (n - next).min(BATCH as u64) as usize;
                    for (i, value) in buf[..len].iter_mut().enumerate() {
                        *value = T::from_seq(next + i as u64);
                    }
                    let mut done = 0;
                    while done < len {
                        done += tx.push_batch(&buf[done..len]);
                    }
                    next += len as u64;
                }
            } else {
                for seq in 0..n {
                    if budget.expired(begin, seq) {
                        break;
                    }
                    let mut value = T::from_seq(seq);
                    while let Err(back) = tx.try_push(value) {
                        value = back;
                    }
                }
            }
            begin
        },
        move || {
            barrier.wait();
            let mut expected = 0u64;
            if batch {
                let mut buf = [T::from_seq(0); BATCH];
                while expected < budget.limit() {
                    let got = rx.pop_batch(&mut buf);
                    for value in black_box(&buf[..got]) {
                        assert!(value.holds(expected), "stream out of order");
                        expected += 1;
                    }
                }
            } else {
                while expected < budget.limit() {
                    if let Some(value) = rx.try_pop() {
                        let value = black_box(value);
                        assert!(value.holds(expected), "stream out of order");
                        expected += 1;
                    }
                }
            }
            (expected, Instant::now())
        },
    );
    (items, end.saturating_duration_since(begin))
}

/// One-way streaming of up to `n` messages of `len` bytes (a multiple of 8) through a [`MsgRing`]
/// of `L` lanes: alloc + fill + push on one side, front + read + pop on the other; bounded by
/// `budget` as [`stream`] is.
pub fn stream_message<const L: usize>(len: u32, n: u64, budget: Duration) -> (u64, Duration) {
    let mut ring: Box<MsgRing<L>> = Box::new(MessageRing::new());
    let (mut tx, mut rx) = ring.split();
    let barrier = Barrier::new(2);
    let budget = Budget::new(n, budget);
    // Each thread owns its handles (moved in), as a real user's threads would: handles
    // left in this frame would share cache lines and slow every contender.
    let barrier = &barrier;
    let budget = &budget;
    let (begin, (items, end)) = run_pinned(
        move || {
            barrier.wait();
            let begin = Instant::now();
            for seq in 0..n {
                if budget.expired(begin, seq) {
                    break;
                }
                let mut slot = loop {
                    if let Ok(slot) = tx.alloc(len, 1) {
                        break slot;
                    }
                };
                fill_payload(slot.payload_mut(), seq);
                slot.push();
            }
            begin
        },
        move || {
            barrier.wait();
            let mut expected = 0u64;
            while expected < budget.limit() {
                if let Ok(message) = rx.front() {
                    assert!(payload_holds(message.payload(), expected), "out of order");
                    rx.pop().expect("front was there");
                    expected += 1;
                }
            }
            (expected, Instant::now())
        },
    );
    (items, end.saturating_duration_since(begin))
}
