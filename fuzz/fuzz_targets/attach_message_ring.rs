//! `MessageRing::attach` on arbitrary bytes (as left in shared memory by a buggy, hostile or
//! crashed peer), then both sides claimed and used, for a one-lane ring (`MessageRing<256>`) and
//! laned ones (`<256, 4>`, lanes of the smallest size, and `<1024, 16>`). Impossible records and
//! indices must be reported as `RecvError::Corrupt` / `ClaimError::Corrupt` /
//! `SendError::Corrupt` / `AttachError::Corrupt`, never panic, never read outside the region
//! (AddressSanitizer watches the exact-size allocation, and every payload returned is checked to
//! lie inside the ring's buffer and read in full).
//!
//! Input: one mode byte, one shape byte (the ring type, `shape % 3`), the region's bytes
//! (zero-padded), then operation bytes. The mode can overwrite the header with a valid one
//! (magic and layout of a freshly initialised ring), free the owner words and give the consumer
//! indices a valid form, so the fuzzer spends its time in the record decoding and the lane
//! recovery rather than in the header checks.
//!
//! When the consumer reads the backlog down to `Empty` and the producer then finds no record left
//! in any lane (its position equals the consumer's), the ring is sound from there on: what the
//! producer sends afterwards is checked against a model. A backlog may also never end: records
//! that chain all the way round a lane read as an endless stream, which a consumer cannot tell
//! from a live producer's, so the reads are bounded and an unended backlog counts as unsound.
#![no_main]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::ptr::NonNull;

use libfuzzer_sys::fuzz_target;
use spsc_core::{
    AttachError, ClaimError, MessageConsumer, MessageReceiver, MessageRing, MessageSender,
    RecvError, RingLayout, SendError, SendSlot, RING_MAGIC,
};

/// Offset of the byte buffer in the ring (locked by the crate's layout assertions).
const BUF: usize = 256;
/// Bytes of the header that describe the ring: magic and `RingLayout`, before the owner words.
const DESCRIPTION: usize = 4 + std::mem::size_of::<RingLayout>();
const OWNERS: std::ops::Range<usize> = DESCRIPTION..DESCRIPTION + 8;
/// Offset of the consumer's index words, one `u32` per lane.
const HEADS: usize = 128;
const MAX_OPS: usize = 256;

/// A zeroed, 128-aligned heap region of exactly `size` bytes.
struct Region {
    ptr: NonNull<u8>,
    size: usize,
}

impl Region {
    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 128).expect("ring layout")
    }

    fn new(size: usize) -> Self {
        // SAFETY: every ring type has a non-zero size.
        let ptr = unsafe { alloc_zeroed(Self::layout(size)) };
        Self {
            ptr: NonNull::new(ptr).expect("allocation"),
            size,
        }
    }

    /// The region's bytes, for setting it up before any ring reference exists.
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: valid and initialised for `size` bytes; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.size) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; every ring reference is gone by now.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.size)) };
    }
}

/// The header bytes of a freshly initialised ring.
fn valid_header<const C: usize, const L: usize>() -> Vec<u8> {
    let size = std::mem::size_of::<MessageRing<C, L>>();
    let mut fresh = Region::new(size);
    // SAFETY: valid for `size` bytes, used only here.
    unsafe { MessageRing::<C, L>::init_in_place(fresh.ptr, size) }.expect("init fresh ring");
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
    /// Stopped after the bound: more messages than a sound ring can hold (records chaining
    /// round a lap read as an endless stream).
    Bound,
}

/// Reads and pops messages until `Empty` or `Corrupt`, checking every payload lies inside the
/// buffer and reading it in full.
fn read_backlog<const C: usize, const L: usize>(
    rx: &mut MessageConsumer<'_, C, L>,
    region: &Region,
) -> End {
    let base = region.ptr.as_ptr() as usize;
    let buf = base + BUF..base + region.size;
    // Every record is at least 8 bytes and a lane holds at most its size less 8: C / 8 + 1 reads
    // drain a full ring.
    for _ in 0..C / 8 + 2 {
        match rx.front() {
            Ok(message) => {
                let payload = message.payload();
                let range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
                assert!(
                    buf.start <= range.start && range.end <= buf.end,
                    "payload {range:x?} outside the buffer {buf:x?}"
                );
                assert!(payload.len() as u32 <= MessageRing::<C, L>::MAX_PAYLOAD);
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

fn run<const C: usize, const L: usize>(mode: u8, data: &[u8]) {
    let size = std::mem::size_of::<MessageRing<C, L>>();
    let max = MessageRing::<C, L>::MAX_PAYLOAD;
    let (bytes, ops) = data.split_at(data.len().min(size));
    let mut region = Region::new(size);
    region.bytes()[..bytes.len()].copy_from_slice(bytes);
    if mode & 1 != 0 {
        region.bytes()[..DESCRIPTION].copy_from_slice(&valid_header::<C, L>());
    }
    if mode & 2 != 0 {
        region.bytes()[OWNERS].fill(0);
    }
    if mode & 4 != 0 {
        // 8-aligned positions; with several lanes bit 0 is the lane's pop parity.
        let form = if L > 1 { !6 } else { !7 };
        for lane in 0..L {
            region.bytes()[HEADS + 4 * lane] &= form;
        }
    }
    let me = NonZeroU32::new(9).unwrap();

    // A truncated region is refused before anything is read.
    let short = usize::from(mode >> 3) * 16;
    // SAFETY: the region is valid for `size` > `short` bytes and used only through this crate.
    let refused = unsafe { MessageRing::<C, L>::attach(region.ptr, short) };
    assert_eq!(
        refused.map(|_| ()),
        Err(AttachError::TooSmall {
            required: size,
            actual: short
        })
    );

    // SAFETY: valid for `size` bytes until `region` drops, after every handle (declared later);
    // only this crate's handles touch it.
    let ring = match unsafe { MessageRing::<C, L>::attach(region.ptr, size) } {
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
    // With one lane the consumer has read everything published; with several, only its current
    // lane is known to be empty, and the others may still hold records (corrupt ones too).
    if L == 1 && backlog == Some(End::Empty) {
        let tx = tx
            .as_ref()
            .expect("producer claim found corruption the consumer had drained past");
        let rx = rx.as_ref().expect("a backlog was read");
        assert_eq!(tx.position(), rx.position(), "producer resumed elsewhere");
    }
    // Sound from here on: no lane holds a record, so both sides stand at the same lane and the
    // producer continues where the consumer reads.
    let sound = backlog == Some(End::Empty)
        && match (&tx, &rx) {
            (Some(tx), Some(rx)) => tx.position() == rx.position(),
            _ => false,
        };

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
                    assert!(len <= max);
                    let data = payload(seq, len as usize);
                    slot.payload_mut().copy_from_slice(&data);
                    slot.push();
                    model.push_back((tag, data));
                }
                Err(SendError::TooLarge { .. }) => assert!(len > max),
                Err(SendError::Full) => {
                    assert!(len <= max);
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
            } else {
                read_backlog(rx, &region);
            }
        }
    }
    drop(tx);
    drop(rx);
}

fuzz_target!(|data: &[u8]| {
    let [mode, shape, rest @ ..] = data else {
        return;
    };
    match shape % 3 {
        0 => run::<256, 1>(*mode, rest),
        1 => run::<256, 4>(*mode, rest),
        _ => run::<1024, 16>(*mode, rest),
    }
});
