//! `Ring::<u64, 8>::attach` or `DenseRing::<u64, 8>::attach` on arbitrary bytes (as left in
//! shared memory by a buggy, hostile or crashed peer), then a bounded number of operations on
//! whatever attached. Nothing may panic or touch memory outside the region (AddressSanitizer
//! watches the exact-size allocation).
//!
//! Input: one mode byte, the region's bytes (zero-padded to the ring's size), then operation
//! bytes. Mode bit 0 overwrites the header with a valid one (magic and layout of a freshly
//! initialised ring) and bit 1 frees the owner words, so most runs get past the header checks;
//! bit 2 picks `DenseRing` instead of `Ring`; the remaining bits pick a truncated length that
//! `attach` must refuse as `TooSmall`.
//!
//! A dense ring's whole shared state is its two index words (the consumer's `head` at 128, the
//! producer's `tail` at 256): every claim or take-over must fail with `ClaimError::Corrupt`, and
//! leave the side free, exactly when `tail - head` exceeds the capacity, and succeed otherwise.
//! Its operations include overwriting either word as a peer would (near the other word or
//! anywhere), after which the live handles must stay within the ring and later claims are
//! checked again.
#![no_main]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::num::NonZeroU32;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use libfuzzer_sys::fuzz_target;
use spsc_core::{AttachError, ClaimError, DenseRing, Ring, RingLayout, RING_MAGIC};

const MAX_OPS: usize = 256;
/// Bytes of the header that describe the ring: magic and `RingLayout`, before the owner words.
const DESCRIPTION: usize = 4 + std::mem::size_of::<RingLayout>();

/// A zeroed, 128-aligned heap region of exactly `R`'s size.
struct Region<R>(NonNull<u8>, std::marker::PhantomData<R>);

impl<R: Target> Region<R> {
    fn layout() -> Layout {
        Layout::from_size_align(R::SIZE, 128).expect("ring layout")
    }

    fn new() -> Self {
        // SAFETY: the layout has a non-zero size.
        let region = unsafe { alloc_zeroed(Self::layout()) };
        Self(
            NonNull::new(region).expect("allocation"),
            std::marker::PhantomData,
        )
    }

    /// The region's bytes, for setting it up before any ring reference exists.
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: valid and initialised for `R::SIZE` bytes; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), R::SIZE) }
    }
}

impl<R> Drop for Region<R> {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(std::mem::size_of::<R>(), 128).expect("ring layout");
        // SAFETY: allocated in `new` with this layout; every ring reference is gone by now.
        unsafe { dealloc(self.0.as_ptr(), layout) };
    }
}

/// A ring type under test.
trait Target: Sized {
    const SIZE: usize = std::mem::size_of::<Self>();
    const LAYOUT: RingLayout;
    /// # Safety
    /// As the ring's own `init_in_place`.
    unsafe fn init_in_place<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError>;
    /// # Safety
    /// As the ring's own `attach`.
    unsafe fn attach<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError>;
    /// Claims both sides and runs the operations `ops` on the attached ring at `region`.
    fn exercise(&self, region: NonNull<u8>, ops: &[u8]);
}

type R8 = Ring<u64, 8>;
type D8 = DenseRing<u64, 8>;

impl Target for R8 {
    const LAYOUT: RingLayout = R8::LAYOUT;
    unsafe fn init_in_place<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError> {
        // SAFETY: forwarded from the caller.
        unsafe { R8::init_in_place(region, len) }
    }
    unsafe fn attach<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError> {
        // SAFETY: forwarded from the caller.
        unsafe { R8::attach(region, len) }
    }
    fn exercise(&self, _region: NonNull<u8>, ops: &[u8]) {
        ring_ops(self, ops);
    }
}

impl Target for D8 {
    const LAYOUT: RingLayout = D8::LAYOUT;
    unsafe fn init_in_place<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError> {
        // SAFETY: forwarded from the caller.
        unsafe { D8::init_in_place(region, len) }
    }
    unsafe fn attach<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError> {
        // SAFETY: forwarded from the caller.
        unsafe { D8::attach(region, len) }
    }
    fn exercise(&self, region: NonNull<u8>, ops: &[u8]) {
        dense_ops(self, region, ops);
    }
}

/// Claims `claim`, or takes the side over from whoever the bytes say holds it.
fn claim_or_take<H>(
    claim: impl FnOnce() -> Result<H, ClaimError>,
    take: impl FnOnce(NonZeroU32) -> Result<H, ClaimError>,
) -> Result<H, ClaimError> {
    match claim() {
        Err(ClaimError::Taken { owner }) => {
            let dead = NonZeroU32::new(owner).expect("Taken by owner 0");
            take(dead)
        }
        result => result,
    }
}

/// The header bytes of a freshly initialised ring: magic and layout, before the owner words.
fn valid_description<R: Target>() -> Vec<u8> {
    let mut fresh = Region::<R>::new();
    // SAFETY: valid for `R::SIZE` bytes, used only here.
    unsafe { R::init_in_place(fresh.0, R::SIZE) }.expect("init fresh ring");
    fresh.bytes()[..DESCRIPTION].to_vec()
}

fn fuzz<R: Target>(mode: u8, rest: &[u8]) {
    let (bytes, ops) = rest.split_at(rest.len().min(R::SIZE));
    let mut region = Region::<R>::new();
    region.bytes()[..bytes.len()].copy_from_slice(bytes);
    if mode & 1 != 0 {
        region.bytes()[..DESCRIPTION].copy_from_slice(&valid_description::<R>());
    }
    if mode & 2 != 0 {
        region.bytes()[DESCRIPTION..DESCRIPTION + 8].fill(0);
    }

    // A truncated region is refused before anything is read.
    let short = usize::from(mode >> 3) * 6;
    // SAFETY: the region is valid for `R::SIZE` >= short bytes and used only through this crate.
    let refused = unsafe { R::attach(region.0, short) };
    assert_eq!(
        refused.map(|_| ()),
        Err(AttachError::TooSmall {
            required: R::SIZE,
            actual: short
        })
    );
    // So is a misaligned one.
    // SAFETY: as above, 8 bytes in.
    let misaligned = unsafe { R::attach(region.0.add(8), R::SIZE - 8) };
    assert!(matches!(misaligned, Err(AttachError::Misaligned { .. })));

    // SAFETY: valid for `R::SIZE` bytes until `region` drops at the end of this function, after
    // the last use of `ring`; only this crate's handles touch it.
    let ring = match unsafe { R::attach(region.0, R::SIZE) } {
        Ok(ring) => ring,
        Err(AttachError::BadMagic { found }) => {
            assert_ne!(found, RING_MAGIC);
            return;
        }
        Err(AttachError::LayoutMismatch { expected, found }) => {
            assert_ne!(expected, found);
            assert_eq!(expected, R::LAYOUT);
            return;
        }
        Err(e) => panic!("unexpected attach error {e:?}"),
    };
    ring.exercise(region.0, ops);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 4 == 0 {
        fuzz::<R8>(mode, rest);
    } else {
        fuzz::<D8>(mode, rest);
    }
});

// ---------------------------------------------------------------------------------------------
// `Ring`

fn ring_ops(ring: &R8, ops: &[u8]) {
    let me = NonZeroU32::new(7).unwrap();
    // SAFETY (both closures): this harness is the only user of the region, so the recorded
    // holder is not running.
    let mut tx = claim_or_take(
        || ring.claim_producer(me),
        |dead| unsafe { ring.take_over_producer(dead, me) },
    )
    .expect("producer");
    let mut rx = claim_or_take(
        || ring.claim_consumer(me),
        |dead| unsafe { ring.take_over_consumer(dead, me) },
    )
    .expect("consumer");
    assert_eq!(ring.holders(), (me.get(), me.get()));

    let mut value = 0u64;
    let mut out = [0u64; 8];
    for &op in ops.iter().take(MAX_OPS) {
        value += 1;
        match op % 8 {
            0 => {
                let _ = tx.push(value);
            }
            1 => {
                let len = usize::from(op >> 5) % 6;
                let n = tx.push_slice(&[value; 5][..len]);
                assert!(n <= len);
            }
            2 => {
                let _ = rx.pop();
            }
            3 => {
                let n = rx.pop_slice(&mut out[..usize::from(op >> 5)]);
                assert!(n <= usize::from(op >> 5));
            }
            4 => {
                let mut drain = rx.drain(usize::from(op >> 3));
                let len = drain.len();
                assert!(len <= 8);
                let _ = drain.next();
            }
            5 => {
                let _ = rx.peek().copied();
                assert!(rx.len() <= 8);
            }
            6 => {
                assert!(tx.free_len() <= 8);
                let _ = tx.is_full();
            }
            _ => {
                // Re-attach both sides, which recomputes the producer's position from the slots.
                drop(tx);
                drop(rx);
                tx = ring.claim_producer(me).expect("released producer");
                rx = ring.claim_consumer(me).expect("released consumer");
            }
        }
    }
    drop((tx, rx));
}

// ---------------------------------------------------------------------------------------------
// `DenseRing`

/// Offsets of the dense ring's index words (locked by the crate's layout assertions).
const HEAD: usize = 128;
const TAIL: usize = 256;
const N: u32 = 8;

/// The index word at `offset` of the ring at `region`, as a peer process sees it.
fn word(region: NonNull<u8>, offset: usize) -> &'static AtomicU32 {
    // SAFETY: `offset` is `HEAD` or `TAIL`, where the ring keeps an `AtomicU32` (aligned, inside
    // the region); the region outlives every use in `dense_ops`, and the word is only ever
    // accessed atomically, by the ring and here.
    unsafe { AtomicU32::from_ptr(region.as_ptr().add(offset).cast()) }
}

/// Whether a claim must refuse the ring's indices as they are now.
fn corrupt(region: NonNull<u8>) -> bool {
    let head = word(region, HEAD).load(Ordering::Acquire);
    let tail = word(region, TAIL).load(Ordering::Acquire);
    tail.wrapping_sub(head) > N
}

/// Checks a claim's (or take-over's) outcome: a handle exactly when the indices are consistent,
/// otherwise `Corrupt` with the side left free (`holder` reads it).
fn checked<H>(
    result: Result<H, ClaimError>,
    corrupt: bool,
    holder: impl FnOnce() -> u32,
) -> Option<H> {
    match result {
        Ok(handle) => {
            assert!(!corrupt, "claim accepted indices more than N apart");
            Some(handle)
        }
        Err(ClaimError::Corrupt { .. }) => {
            assert!(corrupt, "claim refused consistent indices");
            assert_eq!(holder(), 0, "a claim refused as corrupt kept the side");
            None
        }
        Err(e) => panic!("unexpected claim error {e:?}"),
    }
}

fn dense_ops(ring: &D8, region: NonNull<u8>, ops: &[u8]) {
    let me = NonZeroU32::new(7).unwrap();
    let holders = || ring.holders();
    let claim_producer = || {
        // SAFETY: this harness is the only user of the region, so a recorded holder is not
        // running (and a handle of ours it forgot is never used again).
        let result = claim_or_take(
            || ring.claim_producer(me),
            |dead| unsafe { ring.take_over_producer(dead, me) },
        );
        checked(result, corrupt(region), || holders().0)
    };
    let claim_consumer = || {
        // SAFETY: as for the producer.
        let result = claim_or_take(
            || ring.claim_consumer(me),
            |dead| unsafe { ring.take_over_consumer(dead, me) },
        );
        checked(result, corrupt(region), || holders().1)
    };
    let mut tx = claim_producer();
    let mut rx = claim_consumer();
    // Whether a peer overwrote an index word since both handles last attached. Until then the
    // shared words are the handles' own positions, and every count is exact; after it, a
    // handle's cached view of the other word may be stale (more, or less, than the word now
    // says), so only bounds are checked.
    let mut poked = false;
    let exact = |poked: bool, got: usize, want: usize, what: &str| {
        assert!(got <= want || poked, "{what}: {got} > {want}");
        assert!(got >= want || poked, "{what}: {got} < {want}");
    };

    let mut value = 0u64;
    for &op in ops.iter().take(MAX_OPS) {
        value += 1;
        let arg = op >> 4;
        match op & 15 {
            0 => {
                if let Some(tx) = tx.as_mut() {
                    let free = tx.free_len();
                    let pushed = tx.push(value).is_ok();
                    exact(poked, usize::from(pushed), free.min(1), "push");
                }
            }
            1 => {
                if let Some(tx) = tx.as_mut() {
                    let len = usize::from(arg) % 10;
                    let free = tx.free_len();
                    let n = tx.push_slice(&[value; 9][..len]);
                    assert!(n <= len);
                    exact(poked, n, len.min(free), "push_slice count");
                }
            }
            2 => {
                if let Some(tx) = tx.as_mut() {
                    let len = usize::from(arg) % 10;
                    let free = tx.free_len();
                    let mut items = std::iter::repeat_n(value, len);
                    let n = tx.push_iter(&mut items);
                    assert!(n <= len);
                    exact(poked, n, len.min(free), "push_iter count");
                    assert_eq!(items.len(), len - n, "push_iter took unpushed items");
                }
            }
            3 => {
                if let Some(rx) = rx.as_mut() {
                    let ready = rx.len();
                    let popped = rx.pop().is_some();
                    exact(poked, usize::from(popped), ready.min(1), "pop");
                }
            }
            4 => {
                if let Some(rx) = rx.as_mut() {
                    let len = usize::from(arg) % 10;
                    let ready = rx.len();
                    let mut out = [0u64; 9];
                    let n = rx.pop_slice(&mut out[..len]);
                    assert!(n <= len);
                    exact(poked, n, len.min(ready), "pop_slice count");
                }
            }
            5 => {
                if let Some(rx) = rx.as_mut() {
                    let len = usize::from(arg) % 10;
                    let ready = rx.len();
                    let index = (rx.position() % N) as usize;
                    let chunk = rx.read_chunk(len);
                    assert!(chunk.len() <= len);
                    exact(poked, chunk.len(), len.min(ready), "chunk length");
                    let (first, second) = chunk.as_slices();
                    assert_eq!(first.len(), chunk.len().min(8 - index), "split at the end");
                    assert_eq!(first.len() + second.len(), chunk.len());
                    for (i, v) in first.iter().chain(second).enumerate() {
                        assert_eq!(chunk.get(i), Some(v), "get disagrees with as_slices");
                    }
                    assert!(chunk.get(chunk.len()).is_none());
                    if arg & 8 != 0 {
                        chunk.commit_all();
                    } else {
                        chunk.commit(usize::from(arg));
                    }
                }
            }
            6 => {
                if let Some(rx) = rx.as_ref() {
                    assert!(rx.len() <= 8);
                    assert_eq!(rx.peek().is_some(), !rx.is_empty(), "peek");
                    let ready = usize::from(!rx.is_empty());
                    exact(poked, ready, rx.len().min(1), "is_empty");
                }
            }
            7 => {
                if let Some(tx) = tx.as_mut() {
                    let free = tx.free_len();
                    assert!(free <= 8);
                    assert_eq!(tx.is_full(), free == 0, "is_full");
                }
            }
            8 => {
                // Re-attach both sides: each carries on from the shared words.
                drop(tx.take());
                drop(rx.take());
                tx = claim_producer();
                rx = claim_consumer();
                if tx.is_some() && rx.is_some() {
                    poked = false;
                }
            }
            9 => {
                drop(tx.take());
                tx = claim_producer();
            }
            10 => {
                drop(rx.take());
                rx = claim_consumer();
            }
            11 => {
                // The producer "crashes" (its claim stays recorded) and is taken over.
                if let Some(handle) = tx.take() {
                    std::mem::forget(handle);
                    tx = claim_producer();
                }
            }
            12 => {
                if let Some(handle) = rx.take() {
                    std::mem::forget(handle);
                    rx = claim_consumer();
                }
            }
            13 | 14 => {
                // A peer overwrites an index word: `arg` places behind (head) or ahead of (tail)
                // the other word, more than the capacity when `arg > 8`, or anywhere when 15.
                let (target, other) = if op & 15 == 13 {
                    (HEAD, TAIL)
                } else {
                    (TAIL, HEAD)
                };
                let base = word(region, other).load(Ordering::Acquire);
                let new = match (arg, target) {
                    (15, _) => (value as u32).wrapping_mul(0x9E37_79B9),
                    (_, HEAD) => base.wrapping_sub(u32::from(arg)),
                    _ => base.wrapping_add(u32::from(arg)),
                };
                word(region, target).store(new, Ordering::Release);
                poked = true;
            }
            _ => {
                // Without a peer's interference, the shared words are the handles' positions.
                if let (Some(tx), Some(rx), false) = (tx.as_mut(), rx.as_ref(), poked) {
                    let queued = tx.position().wrapping_sub(rx.position());
                    assert!(queued <= N, "handles more than N apart");
                    assert_eq!(rx.len(), queued as usize, "len");
                    assert_eq!(tx.free_len(), (N - queued) as usize, "free_len");
                }
            }
        }
    }
    drop((tx, rx));
}
