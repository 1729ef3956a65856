//! `Ring::<u64, 8>::attach` on arbitrary bytes (as left in shared memory by a buggy, hostile or
//! crashed peer), then a bounded number of operations on whatever attached. Nothing may panic or
//! touch memory outside the region (AddressSanitizer watches the exact-size allocation).
//!
//! Input: one mode byte, the region's bytes (zero-padded to the ring's size), then operation
//! bytes. The mode can overwrite the header with a valid one (magic and layout of a freshly
//! initialised ring) and free the owner words, so most runs get past the header checks; it also
//! picks a truncated length that `attach` must refuse as `TooSmall`.
#![no_main]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::num::NonZeroU32;
use std::ptr::NonNull;

use libfuzzer_sys::fuzz_target;
use spsc_core::{AttachError, ClaimError, Ring, RingLayout, RING_MAGIC};

type R = Ring<u64, 8>;
const SIZE: usize = std::mem::size_of::<R>();
const MAX_OPS: usize = 256;
/// Bytes of the header that describe the ring: magic and `RingLayout`, before the owner words.
const DESCRIPTION: usize = 4 + std::mem::size_of::<RingLayout>();

/// A zeroed, 128-aligned heap region of exactly `SIZE` bytes.
struct Region(NonNull<u8>);

impl Region {
    fn layout() -> Layout {
        Layout::from_size_align(SIZE, 128).expect("ring layout")
    }

    fn new() -> Self {
        // SAFETY: the layout has a non-zero size.
        Self(NonNull::new(unsafe { alloc_zeroed(Self::layout()) }).expect("allocation"))
    }

    /// The region's bytes, for setting it up before any ring reference exists.
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: valid and initialised for SIZE bytes; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), SIZE) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; every ring reference is gone by now.
        unsafe { dealloc(self.0.as_ptr(), Self::layout()) };
    }
}

/// Claims `claim`, or takes the side over from whoever the bytes say holds it.
fn claim_or_take<H>(
    claim: impl FnOnce() -> Result<H, ClaimError>,
    take: impl FnOnce(NonZeroU32) -> Result<H, ClaimError>,
) -> Option<H> {
    match claim() {
        Ok(handle) => Some(handle),
        Err(ClaimError::Taken { owner }) => {
            let dead = NonZeroU32::new(owner).expect("Taken by owner 0");
            Some(take(dead).expect("take over from the recorded owner"))
        }
        Err(e) => panic!("unexpected claim error {e:?}"),
    }
}

/// The header bytes of a freshly initialised ring: magic and layout, before the owner words.
fn valid_description() -> Vec<u8> {
    let mut fresh = Region::new();
    // SAFETY: valid for SIZE bytes, used only here.
    unsafe { R::init_in_place(fresh.0, SIZE) }.expect("init fresh ring");
    fresh.bytes()[..DESCRIPTION].to_vec()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (bytes, ops) = rest.split_at(rest.len().min(SIZE));
    let mut region = Region::new();
    region.bytes()[..bytes.len()].copy_from_slice(bytes);
    if mode & 1 != 0 {
        region.bytes()[..DESCRIPTION].copy_from_slice(&valid_description());
    }
    if mode & 2 != 0 {
        region.bytes()[DESCRIPTION..DESCRIPTION + 8].fill(0);
    }
    let me = NonZeroU32::new(7).unwrap();

    // A truncated region is refused before anything is read.
    let short = usize::from(mode >> 2) * 6;
    // SAFETY: the region is valid for SIZE >= short bytes and used only through this crate.
    let refused = unsafe { R::attach(region.0, short) };
    assert_eq!(
        refused.map(|_| ()),
        Err(AttachError::TooSmall {
            required: SIZE,
            actual: short
        })
    );
    // So is a misaligned one.
    // SAFETY: as above, 8 bytes in.
    let misaligned = unsafe { R::attach(region.0.add(8), SIZE - 8) };
    assert!(matches!(misaligned, Err(AttachError::Misaligned { .. })));

    // SAFETY: valid for SIZE bytes for the whole closure; only this crate's handles touch it.
    let ring = match unsafe { R::attach(region.0, SIZE) } {
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
});
