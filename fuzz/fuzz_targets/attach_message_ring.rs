//! `MessageRing::<256>::attach` on arbitrary bytes (as left in shared memory by a buggy, hostile
//! or crashed peer), then both sides claimed and used. Impossible records must be reported as
//! `RecvError::Corrupt` / `ClaimError::Corrupt` / `SendError::Corrupt`, never panic, never read
//! outside the region (AddressSanitizer watches the exact-size allocation, and every payload
//! returned is checked to lie inside the ring's buffer and read in full).
//!
//! Input: one mode byte, the region's bytes (zero-padded), then operation bytes. The mode can
//! overwrite the header with a valid one (magic and layout of a freshly initialised ring), free
//! the owner words and align the consumer index, so the fuzzer spends its time in the record
//! decoding rather than in the header checks.
//!
//! When the consumer reads the backlog down to `Empty` without finding corruption, the ring is
//! sound from there on: the producer must resume exactly there, and what it sends afterwards is
//! checked against a model.
#![no_main]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::ptr::NonNull;

use libfuzzer_sys::fuzz_target;
use spsc_core::{
    AttachError, ClaimError, MessageConsumer, MessageReceiver, MessageRing, MessageSender,
    RecvError, SendError, SendSlot, RING_MAGIC,
};

const C: usize = 256;
type R = MessageRing<C>;
const SIZE: usize = std::mem::size_of::<R>();
/// Offset of the byte buffer in the ring (locked by the crate's layout assertions).
const BUF: usize = 256;
/// Bytes of the header that describe the ring: magic and `RingLayout`, before the owner words.
const DESCRIPTION: usize = 4 + 32;
const OWNERS: std::ops::Range<usize> = DESCRIPTION..DESCRIPTION + 8;
const HEAD: usize = 128;
const MAX_OPS: usize = 256;

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

/// The header bytes of a freshly initialised ring.
fn valid_header() -> Vec<u8> {
    let mut fresh = Region::new();
    // SAFETY: valid for SIZE bytes, used only here.
    unsafe { R::init_in_place(fresh.0, SIZE) }.expect("init fresh ring");
    fresh.bytes()[..DESCRIPTION].to_vec()
}

/// Claims `claim`, or takes the side over from whoever the bytes say holds it. `None` when the
/// ring is corrupt, in which case the side must have been released again.
fn claim_or_take<H>(
    claim: impl FnOnce() -> Result<H, ClaimError>,
    take: impl FnOnce(NonZeroU32) -> Result<H, ClaimError>,
) -> Option<H> {
    let result = match claim() {
        Err(ClaimError::Taken { owner }) => take(NonZeroU32::new(owner).expect("Taken by 0")),
        other => other,
    };
    match result {
        Ok(handle) => Some(handle),
        Err(ClaimError::Corrupt { .. }) => None,
        Err(e) => panic!("unexpected claim error {e:?}"),
    }
}

/// What reading the backlog ended with.
#[derive(Debug, PartialEq)]
enum End {
    Empty,
    Corrupt,
    /// Stopped after the bound (only possible if messages keep appearing, which they cannot).
    Bound,
}

/// Reads and pops messages until `Empty` or `Corrupt`, checking every payload lies inside the
/// buffer and reading it in full.
fn read_backlog(rx: &mut MessageConsumer<'_, C>, region: &Region) -> End {
    let buf = region.0.as_ptr() as usize + BUF..region.0.as_ptr() as usize + SIZE;
    // Every record is at least 8 bytes and padding at most one per lap: C / 8 + 1 reads drain
    // a full ring.
    for _ in 0..C / 8 + 2 {
        match rx.front() {
            Ok(message) => {
                let payload = message.payload();
                let range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
                assert!(
                    buf.start <= range.start && range.end <= buf.end,
                    "payload {range:x?} outside the buffer {buf:x?}"
                );
                assert!(payload.len() as u32 <= R::MAX_PAYLOAD);
                assert_eq!(range.start % 8, 0, "payload not 8-aligned");
                let sum = payload.iter().fold(0u8, |a, &b| a.wrapping_add(b));
                std::hint::black_box(sum);
                assert_eq!(rx.pop(), Ok(()), "pop after a good front");
            }
            Err(RecvError::Empty) => return End::Empty,
            Err(RecvError::Corrupt { reason }) => {
                // Nothing changes by asking again: the corruption stays reported.
                assert_eq!(rx.front().map(|_| ()), Err(RecvError::Corrupt { reason }));
                assert_eq!(rx.pop(), Err(RecvError::Corrupt { reason }));
                assert!(!rx.is_empty());
                return End::Corrupt;
            }
            Err(e) => panic!("unexpected receive error {e:?}"),
        }
    }
    End::Bound
}

fn payload(seq: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq.wrapping_mul(131) as usize).wrapping_add(i * 7) as u8)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (bytes, ops) = rest.split_at(rest.len().min(SIZE));
    let mut region = Region::new();
    region.bytes()[..bytes.len()].copy_from_slice(bytes);
    if mode & 1 != 0 {
        region.bytes()[..DESCRIPTION].copy_from_slice(&valid_header());
    }
    if mode & 2 != 0 {
        region.bytes()[OWNERS].fill(0);
    }
    if mode & 4 != 0 {
        region.bytes()[HEAD] &= !7;
    }
    let me = NonZeroU32::new(9).unwrap();

    // A truncated region is refused before anything is read.
    let short = usize::from(mode >> 3) * 16;
    // SAFETY: the region is valid for SIZE > short bytes and used only through this crate.
    let refused = unsafe { R::attach(region.0, short) };
    assert_eq!(
        refused.map(|_| ()),
        Err(AttachError::TooSmall {
            required: SIZE,
            actual: short
        })
    );

    // SAFETY: valid for SIZE bytes until `region` drops, after every handle (declared later);
    // only this crate's handles touch it.
    let ring = match unsafe { R::attach(region.0, SIZE) } {
        Ok(ring) => ring,
        Err(AttachError::BadMagic { found }) => {
            assert_ne!(found, RING_MAGIC);
            return;
        }
        Err(AttachError::LayoutMismatch { expected, found }) => {
            assert_ne!(expected, found);
            return;
        }
        Err(AttachError::Corrupt { .. }) => return,
        Err(e) => panic!("unexpected attach error {e:?}"),
    };

    // SAFETY (take-over closures): this harness is the only user of the region, so the recorded
    // holder is not running.
    let mut rx = claim_or_take(
        || ring.claim_consumer(me),
        |dead| unsafe { ring.take_over_consumer(dead, me) },
    );
    if rx.is_none() {
        assert_eq!(
            ring.holders().1,
            0,
            "a corrupt consumer claim was not released"
        );
    }
    let backlog = rx.as_mut().map(|rx| read_backlog(rx, &region));
    assert_ne!(backlog, Some(End::Bound), "backlog never ended");

    let mut tx = claim_or_take(
        || ring.claim_producer(me),
        // SAFETY: as for the consumer above: no other user of the region is running.
        |dead| unsafe { ring.take_over_producer(dead, me) },
    );
    if tx.is_none() {
        assert_eq!(
            ring.holders().0,
            0,
            "a corrupt producer claim was not released"
        );
    }
    // Sound from here on: the consumer read everything published and the producer resumes there.
    let sound = backlog == Some(End::Empty) && tx.is_some();
    if backlog == Some(End::Empty) && tx.is_none() {
        panic!("producer claim found corruption the consumer had drained past");
    }

    let mut model: VecDeque<(u16, Vec<u8>)> = VecDeque::new();
    let mut seq = 0u32;
    for &op in ops.iter().take(MAX_OPS) {
        if op & 1 != 0 {
            let Some(tx) = tx.as_mut() else { continue };
            let len = u32::from(op >> 1);
            let tag = u16::from(op) * 257;
            seq += 1;
            match tx.alloc(len, tag) {
                Ok(mut slot) => {
                    assert!(len <= R::MAX_PAYLOAD);
                    let data = payload(seq, len as usize);
                    slot.payload_mut().copy_from_slice(&data);
                    slot.push();
                    model.push_back((tag, data));
                }
                Err(SendError::TooLarge { .. }) => assert!(len > R::MAX_PAYLOAD),
                Err(SendError::Full) => {
                    assert!(len <= R::MAX_PAYLOAD);
                    if sound {
                        assert!(!model.is_empty(), "empty ring said Full");
                    }
                }
                Err(SendError::Corrupt { .. }) => assert!(!sound, "sound ring said Corrupt"),
                Err(e) => panic!("unexpected send error {e:?}"),
            }
        } else {
            let Some(rx) = rx.as_mut() else { continue };
            if sound {
                let got = rx.recv_with(|m| (m.tag(), m.payload().to_vec()));
                match model.pop_front() {
                    Some(want) => assert_eq!(got, Ok(want), "message after the backlog"),
                    None => assert_eq!(got, Err(RecvError::Empty)),
                }
            } else if read_backlog(rx, &region) == End::Bound {
                panic!("backlog never ended");
            }
        }
    }
    drop(tx);
    drop(rx);
});
