//! Readiness of the rings for shared memory: every way `init_in_place` and `attach` refuse a
//! region, layout fingerprints, and the same bytes used through two mappings at different
//! addresses by two threads (which shows the rings hold indices, not pointers).
//!
//! Not built under `--cfg loom`: loom's rings hold tracked cells, not plain bytes, so they have
//! no `init_in_place` or `attach`.
#![cfg(not(loom))]

mod common;

use std::mem;
use std::ptr::NonNull;

use common::{owner, Region};
use spsc_core::{
    AttachError, DenseRing, MessageReceiver, MessageRing, MessageSender, RecvError, Ring, RingKind,
    RingLayout, SendError, SendSlot, RING_FORMAT_VERSION, RING_MAGIC,
};

/// Caller-owned memory large enough for every ring used here.
fn ring_region() -> Region {
    Region::new(4096)
}

/// `init_in_place` then `attach` a ring type at a region; both as one generic interface.
trait InPlace: Sized + std::fmt::Debug {
    const LAYOUT: RingLayout;
    /// # Safety
    /// As `Ring::init_in_place`.
    unsafe fn init<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError>;
    /// # Safety
    /// As `Ring::attach`.
    unsafe fn attach<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError>;
}

impl<T, const N: usize> InPlace for Ring<T, N> {
    const LAYOUT: RingLayout = Ring::<T, N>::LAYOUT;
    unsafe fn init<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError> {
        // SAFETY: forwarded from the caller.
        unsafe { Ring::init_in_place(region, len) }
    }
    unsafe fn attach<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError> {
        // SAFETY: forwarded from the caller.
        unsafe { Ring::attach(region, len) }
    }
}

impl<T, const N: usize> InPlace for DenseRing<T, N> {
    const LAYOUT: RingLayout = DenseRing::<T, N>::LAYOUT;
    unsafe fn init<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError> {
        // SAFETY: forwarded from the caller.
        unsafe { DenseRing::init_in_place(region, len) }
    }
    unsafe fn attach<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError> {
        // SAFETY: forwarded from the caller.
        unsafe { DenseRing::attach(region, len) }
    }
}

impl<const C: usize> InPlace for MessageRing<C> {
    const LAYOUT: RingLayout = MessageRing::<C>::LAYOUT;
    unsafe fn init<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError> {
        // SAFETY: forwarded from the caller.
        unsafe { MessageRing::init_in_place(region, len) }
    }
    unsafe fn attach<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError> {
        // SAFETY: forwarded from the caller.
        unsafe { MessageRing::attach(region, len) }
    }
}

/// Misaligned, too small and never initialised regions are refused by both entry points.
fn unusable_regions_are_refused<R: InPlace>() {
    let size = mem::size_of::<R>();
    let mut region = ring_region();
    assert!(region.len() >= size + 128);
    let base = region.base();

    // SAFETY: 8 bytes in, the rest of the region is valid for `len - 8` bytes; a misaligned
    // region is refused before any byte is touched.
    let shifted = unsafe { NonNull::new_unchecked(base.as_ptr().add(8)) };
    let address = shifted.as_ptr() as usize;
    for result in [
        // SAFETY: as above.
        unsafe { R::init(shifted, region.len() - 8) }.map(|_| ()),
        // SAFETY: as above.
        unsafe { R::attach(shifted, region.len() - 8) }.map(|_| ()),
    ] {
        let error = result.unwrap_err();
        assert_eq!(
            error,
            AttachError::Misaligned {
                required: 128,
                address
            }
        );
        let text = error.to_string();
        assert!(text.contains("aligned") && text.contains("128"), "{text}");
    }

    for result in [
        // SAFETY: the region is valid for more than `size - 1` bytes; refused before use.
        unsafe { R::init(base, size - 1) }.map(|_| ()),
        // SAFETY: as above.
        unsafe { R::attach(base, size - 1) }.map(|_| ()),
    ] {
        let error = result.unwrap_err();
        assert_eq!(
            error,
            AttachError::TooSmall {
                required: size,
                actual: size - 1
            }
        );
        let text = error.to_string();
        assert!(
            text.contains(&size.to_string()) && text.contains(&(size - 1).to_string()),
            "{text}"
        );
    }

    // SAFETY: the zeroed region is valid for `len` bytes and only read by the check.
    let error = unsafe { R::attach(base, region.len()) }.unwrap_err();
    assert_eq!(error, AttachError::BadMagic { found: 0 });
    let text = error.to_string();
    assert!(
        text.contains("magic") && text.contains("initialised"),
        "{text}"
    );
}

#[test]
fn unusable_regions_are_refused_by_ring() {
    unusable_regions_are_refused::<Ring<u64, 8>>();
    unusable_regions_are_refused::<Ring<u8, 1>>();
}

#[test]
fn unusable_regions_are_refused_by_dense_ring() {
    unusable_regions_are_refused::<DenseRing<u64, 8>>();
    unusable_regions_are_refused::<DenseRing<[u8; 64], 16>>();
}

#[test]
fn unusable_regions_are_refused_by_message_ring() {
    unusable_regions_are_refused::<MessageRing<256>>();
    unusable_regions_are_refused::<MessageRing<1024>>();
}

#[test]
fn foreign_magic_is_reported() {
    let mut region = ring_region();
    region.first_line()[..4].copy_from_slice(b"ELF\x7f");
    let len = region.len();
    // SAFETY: valid for `len` bytes, only read by the check.
    let error = unsafe { Ring::<u64, 8>::attach(region.base(), len) }.unwrap_err();
    let found = u32::from_le_bytes(*b"ELF\x7f");
    assert_eq!(error, AttachError::BadMagic { found });
    assert!(error.to_string().contains(&format!("{found:#010x}")));
    assert_eq!(RING_MAGIC, u32::from_le_bytes(*b"SPSC"));
}

/// A region initialised as `I` and attached as `A` is refused, naming both layouts.
fn layout_mismatch<I: InPlace, A: InPlace>() {
    let mut region = ring_region();
    let len = region.len();
    let base = region.base();
    // SAFETY: valid for `len` bytes and exclusively ours; the reference is not kept.
    unsafe { I::init(base, len) }.unwrap();
    // SAFETY: as above; a mismatching region is only read.
    let error = unsafe { A::attach(base, len) }.unwrap_err();
    assert_eq!(
        error,
        AttachError::LayoutMismatch {
            expected: A::LAYOUT,
            found: I::LAYOUT
        }
    );
    let text = error.to_string();
    assert!(text.contains("layout"), "{text}");
    assert!(
        text.contains(&format!("capacity: {}", I::LAYOUT.capacity)),
        "{text}"
    );
    // The right type still attaches.
    // SAFETY: as above.
    unsafe { I::attach(base, len) }.unwrap();
}

#[test]
fn another_ring_type_is_a_layout_mismatch() {
    layout_mismatch::<Ring<u64, 8>, Ring<u64, 16>>();
    layout_mismatch::<Ring<u64, 8>, Ring<u32, 8>>();
    layout_mismatch::<Ring<u64, 8>, Ring<i64, 4>>();
    layout_mismatch::<Ring<u64, 8>, MessageRing<128>>();
    layout_mismatch::<MessageRing<256>, MessageRing<512>>();
    layout_mismatch::<MessageRing<256>, MessageRing<128>>();
    layout_mismatch::<MessageRing<256>, Ring<u64, 8>>();
    layout_mismatch::<MessageRing<256>, Ring<u8, 256>>();
    // The two element rings of the same type and capacity differ in kind (and layout).
    layout_mismatch::<Ring<u64, 8>, DenseRing<u64, 8>>();
    layout_mismatch::<DenseRing<u64, 8>, Ring<u64, 8>>();
    layout_mismatch::<DenseRing<u64, 8>, DenseRing<u64, 16>>();
    layout_mismatch::<DenseRing<u64, 8>, MessageRing<128>>();
}

#[test]
fn another_format_version_is_a_layout_mismatch() {
    let mut region = ring_region();
    let len = region.len();
    // SAFETY: valid for `len` bytes and exclusively ours; the reference is not kept.
    unsafe { Ring::<u64, 8>::init_in_place(region.base(), len) }.unwrap();
    // The layout record follows the magic word; its first field is the version.
    region.first_line()[4..8].copy_from_slice(&(RING_FORMAT_VERSION + 1).to_le_bytes());
    // SAFETY: as above; only read.
    let error = unsafe { Ring::<u64, 8>::attach(region.base(), len) }.unwrap_err();
    let AttachError::LayoutMismatch { expected, found } = error else {
        panic!("{error:?}");
    };
    assert_eq!(expected, Ring::<u64, 8>::LAYOUT);
    assert_eq!(found.version, RING_FORMAT_VERSION + 1);
    assert_eq!(
        RingLayout {
            version: RING_FORMAT_VERSION,
            ..found
        },
        expected
    );
}

#[test]
fn a_ring_survives_its_handles_and_is_found_again_by_attach() {
    let mut region = ring_region();
    let len = region.len();
    let base = region.base();
    {
        // SAFETY: valid for `len` bytes, exclusively ours while the reference lives.
        let ring = unsafe { Ring::<u64, 8>::init_in_place(base, len) }.unwrap();
        let mut tx = ring.claim_producer(owner(1)).unwrap();
        tx.push_slice(&[1, 2, 3]);
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        assert_eq!(rx.pop(), Some(1));
    }
    {
        // SAFETY: as above; the previous reference is gone.
        let ring = unsafe { Ring::<u64, 8>::attach(base, len) }.unwrap();
        assert_eq!(ring.holders(), (0, 0));
        let mut tx = ring.claim_producer(owner(3)).unwrap();
        tx.push(4).unwrap();
        let mut rx = ring.claim_consumer(owner(4)).unwrap();
        assert_eq!(rx.drain(8).collect::<Vec<_>>(), [2, 3, 4]);
    }
    // Re-initialising discards the contents.
    // SAFETY: as above.
    let ring = unsafe { Ring::<u64, 8>::init_in_place(base, len) }.unwrap();
    assert!(ring.claim_consumer(owner(5)).unwrap().is_empty());

    let mut region = ring_region();
    let len = region.len();
    let base = region.base();
    {
        // SAFETY: valid for `len` bytes, exclusively ours while the reference lives.
        let ring = unsafe { MessageRing::<512>::init_in_place(base, len) }.unwrap();
        let mut tx = ring.claim_producer(owner(1)).unwrap();
        tx.send(9, b"kept").unwrap();
    }
    // SAFETY: as above; the previous reference is gone.
    let ring = unsafe { MessageRing::<512>::attach(base, len) }.unwrap();
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    assert_eq!(
        rx.recv_with(|m| (m.tag(), m.payload().to_vec())),
        Ok((9, b"kept".to_vec()))
    );
}

#[test]
fn fingerprints_tell_layouts_apart() {
    let layouts = [
        Ring::<u64, 8>::LAYOUT,
        Ring::<u64, 16>::LAYOUT,
        Ring::<u32, 8>::LAYOUT,
        Ring::<i64, 8>::LAYOUT,
        Ring::<[u8; 8], 8>::LAYOUT,
        Ring::<u8, 256>::LAYOUT,
        MessageRing::<64>::LAYOUT,
        MessageRing::<256>::LAYOUT,
        MessageRing::<512>::LAYOUT,
        DenseRing::<u64, 8>::LAYOUT,
        DenseRing::<u64, 16>::LAYOUT,
        DenseRing::<u32, 8>::LAYOUT,
    ];
    // `i64` and `u64` (and `[u8; 8]` vs `u64` apart from alignment) have equal layouts: the
    // fingerprint describes bytes, not types.
    assert_eq!(Ring::<u64, 8>::LAYOUT, Ring::<i64, 8>::LAYOUT);
    for (i, a) in layouts.iter().enumerate() {
        for (j, b) in layouts.iter().enumerate() {
            assert_eq!(
                a == b,
                a.fingerprint() == b.fingerprint(),
                "layouts {i} and {j}: {a:?} vs {b:?}"
            );
        }
    }
    assert_eq!(
        Ring::<u64, 8>::LAYOUT.fingerprint(),
        Ring::<u64, 8>::LAYOUT.fingerprint()
    );
    let copy = RingLayout {
        ..MessageRing::<256>::LAYOUT
    };
    assert_eq!(copy.fingerprint(), MessageRing::<256>::LAYOUT.fingerprint());
    // Every single field takes part.
    let base = Ring::<u64, 8>::LAYOUT;
    let variants = [
        RingLayout {
            version: base.version + 1,
            ..base
        },
        RingLayout {
            kind: RingKind::Message as u32,
            ..base
        },
        RingLayout {
            capacity: base.capacity + 1,
            ..base
        },
        RingLayout {
            elem_size: base.elem_size + 1,
            ..base
        },
        RingLayout {
            elem_align: base.elem_align + 1,
            ..base
        },
        RingLayout {
            block_len: base.block_len + 1,
            ..base
        },
        RingLayout {
            block_size: base.block_size + 1,
            ..base
        },
        RingLayout {
            block_spread: base.block_spread + 1,
            ..base
        },
        RingLayout {
            data_offset: base.data_offset + 1,
            ..base
        },
        RingLayout {
            total_size: base.total_size + 1,
            ..base
        },
    ];
    for variant in variants {
        assert_ne!(variant.fingerprint(), base.fingerprint(), "{variant:?}");
    }
    // Usable in constants, e.g. in a segment header written at compile time.
    const FINGERPRINT: u64 = Ring::<u64, 8>::LAYOUT.fingerprint();
    assert_eq!(FINGERPRINT, base.fingerprint());
}

// ---------------------------------------------------------------------------------------------
// One memfd mapped twice: the producer uses the ring at address A, the consumer at address B.

mod two_mappings {
    use std::ffi::c_void;
    use std::ptr::{self, NonNull};
    use std::thread;

    use rustix::fd::OwnedFd;
    use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
    use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

    use super::*;

    /// The same `len` bytes of a memfd, mapped shared at two addresses.
    struct DoubleMapping {
        a: NonNull<u8>,
        b: NonNull<u8>,
        len: usize,
        _fd: OwnedFd,
    }

    impl DoubleMapping {
        fn new(len: usize) -> Self {
            let fd = memfd_create("spsc-core-shared-region-test", MemfdFlags::CLOEXEC)
                .expect("memfd_create");
            ftruncate(&fd, len as u64).expect("ftruncate");
            let map = || {
                // SAFETY: a fresh shared mapping of the memfd at an address the kernel picks;
                // it aliases no Rust object (only the other mapping, which is the point).
                let address = unsafe {
                    mmap(
                        ptr::null_mut(),
                        len,
                        ProtFlags::READ | ProtFlags::WRITE,
                        MapFlags::SHARED,
                        &fd,
                        0,
                    )
                }
                .expect("mmap");
                NonNull::new(address.cast::<u8>()).expect("mmap returns non-null on success")
            };
            let a = map();
            let b = map();
            assert_ne!(a, b, "two mappings, two addresses");
            Self { a, b, len, _fd: fd }
        }
    }

    impl Drop for DoubleMapping {
        fn drop(&mut self) {
            for address in [self.a, self.b] {
                // SAFETY: both were mapped by `new` with `len` bytes, and every ring reference
                // into them is gone (they borrow the mapping).
                unsafe { munmap(address.as_ptr().cast::<c_void>(), self.len) }.expect("munmap");
            }
        }
    }

    const COUNT: u64 = 100_000;

    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    struct Item {
        seq: u64,
        check: u64,
    }

    fn check(seq: u64) -> u64 {
        (seq ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9)
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot run memfd_create or mmap")]
    fn ring_through_two_mappings() {
        type R = Ring<Item, 256>;
        let mapping = DoubleMapping::new(mem::size_of::<R>().next_multiple_of(4096));
        // SAFETY: the mapping is valid for `len` bytes and outlives both references; the bytes
        // are accessed only through the ring's handles.
        let ring_a = unsafe { R::init_in_place(mapping.a, mapping.len) }.unwrap();
        // SAFETY: as above; the same bytes at the other address.
        let ring_b = unsafe { R::attach(mapping.b, mapping.len) }.unwrap();
        assert_ne!(
            ring_a as *const R as usize, ring_b as *const R as usize,
            "two views at two addresses"
        );
        let tx = ring_a.claim_producer(owner(1)).unwrap();
        // Claims are shared state: visible through the other mapping.
        assert!(ring_b.claim_producer(owner(2)).is_err());
        let rx = ring_b.claim_consumer(owner(3)).unwrap();
        assert_eq!(ring_a.holders(), (1, 3));
        thread::scope(|scope| {
            scope.spawn(move || {
                let mut tx = tx;
                let mut seq = 0;
                while seq < COUNT {
                    // Alternate single and batch pushes.
                    if seq.is_multiple_of(2) {
                        let item = Item {
                            seq,
                            check: check(seq),
                        };
                        if tx.push(item).is_ok() {
                            seq += 1;
                        } else {
                            thread::yield_now();
                        }
                    } else {
                        let end = (seq + 37).min(COUNT);
                        let pushed = tx.push_iter((seq..end).map(|seq| Item {
                            seq,
                            check: check(seq),
                        }));
                        if pushed == 0 {
                            thread::yield_now();
                        }
                        seq += pushed as u64;
                    }
                }
            });
            let mut rx = rx;
            let mut expected = 0;
            while expected < COUNT {
                let mut got_any = false;
                for item in rx.drain(64) {
                    assert_eq!(item.seq, expected, "lost, duplicated or reordered");
                    assert_eq!(item.check, check(item.seq), "torn element {item:?}");
                    expected += 1;
                    got_any = true;
                }
                if !got_any {
                    thread::yield_now();
                }
            }
            assert!(rx.pop().is_none());
        });
        assert_eq!(ring_a.holders(), (0, 0));
    }

    /// The dense ring through two mappings: batches in, read chunks (as slices) out.
    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot run memfd_create or mmap")]
    fn dense_ring_through_two_mappings() {
        type R = DenseRing<Item, 256>;
        let mapping = DoubleMapping::new(mem::size_of::<R>().next_multiple_of(4096));
        // SAFETY: the mapping is valid for `len` bytes and outlives both references; the bytes
        // are accessed only through the ring's handles.
        let ring_a = unsafe { R::init_in_place(mapping.a, mapping.len) }.unwrap();
        // SAFETY: as above; the same bytes at the other address.
        let ring_b = unsafe { R::attach(mapping.b, mapping.len) }.unwrap();
        let tx = ring_a.claim_producer(owner(1)).unwrap();
        assert!(ring_b.claim_producer(owner(2)).is_err());
        let rx = ring_b.claim_consumer(owner(3)).unwrap();
        assert_eq!(ring_a.holders(), (1, 3));
        thread::scope(|scope| {
            scope.spawn(move || {
                let mut tx = tx;
                let mut seq = 0;
                let mut batch = Vec::new();
                while seq < COUNT {
                    let end = (seq + 1 + seq % 41).min(COUNT);
                    batch.clear();
                    batch.extend((seq..end).map(|seq| Item {
                        seq,
                        check: check(seq),
                    }));
                    let pushed = tx.push_slice(&batch);
                    if pushed == 0 {
                        thread::yield_now();
                    }
                    seq += pushed as u64;
                }
            });
            let mut rx = rx;
            let mut expected = 0;
            while expected < COUNT {
                let chunk = rx.read_chunk(64);
                if chunk.is_empty() {
                    thread::yield_now();
                    continue;
                }
                let (first, second) = chunk.as_slices();
                for item in first.iter().chain(second) {
                    assert_eq!(item.seq, expected, "lost, duplicated or reordered");
                    assert_eq!(item.check, check(item.seq), "torn element {item:?}");
                    expected += 1;
                }
                chunk.commit_all();
            }
            assert!(rx.pop().is_none());
        });
        assert_eq!(ring_a.holders(), (0, 0));
    }

    /// Deterministic length of message `seq`: mostly small, now and then up to the maximum.
    fn message_len(seq: u64, max: u32) -> u32 {
        let h = check(seq);
        if h.is_multiple_of(8) {
            (h >> 8) as u32 % (max + 1)
        } else {
            (h >> 8) as u32 % 64
        }
    }

    fn message_byte(seq: u64, i: usize) -> u8 {
        (check(seq) >> ((i % 8) * 8)) as u8 ^ i as u8
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot run memfd_create or mmap")]
    fn message_ring_through_two_mappings() {
        type R = MessageRing<4096>;
        let max = R::MAX_PAYLOAD;
        let mapping = DoubleMapping::new(mem::size_of::<R>().next_multiple_of(4096));
        // SAFETY: the mapping is valid for `len` bytes and outlives both references; the bytes
        // are accessed only through the ring's handles.
        let ring_a = unsafe { R::init_in_place(mapping.a, mapping.len) }.unwrap();
        // SAFETY: as above; the same bytes at the other address.
        let ring_b = unsafe { R::attach(mapping.b, mapping.len) }.unwrap();
        let tx = ring_a.claim_producer(owner(1)).unwrap();
        let rx = ring_b.claim_consumer(owner(2)).unwrap();
        assert!(ring_a.claim_consumer(owner(3)).is_err());
        thread::scope(|scope| {
            scope.spawn(move || {
                let mut tx = tx;
                let mut seq = 0;
                while seq < COUNT {
                    let len = message_len(seq, max);
                    match tx.alloc(len, seq as u16) {
                        Ok(mut slot) => {
                            for (i, byte) in slot.payload_mut().iter_mut().enumerate() {
                                *byte = message_byte(seq, i);
                            }
                            slot.push();
                            seq += 1;
                        }
                        Err(SendError::Full) => thread::yield_now(),
                        Err(error) => panic!("message {seq}: {error}"),
                    }
                }
            });
            let mut rx = rx;
            let mut seq = 0;
            while seq < COUNT {
                match rx.front() {
                    Ok(message) => {
                        assert_eq!(message.tag(), seq as u16, "lost, duplicated or reordered");
                        assert_eq!(message.len(), message_len(seq, max) as usize, "seq {seq}");
                        for (i, &byte) in message.payload().iter().enumerate() {
                            assert_eq!(byte, message_byte(seq, i), "seq {seq} byte {i}");
                        }
                        rx.pop().unwrap();
                        seq += 1;
                    }
                    Err(RecvError::Empty) => thread::yield_now(),
                    Err(error) => panic!("message {seq}: {error}"),
                }
            }
            assert_eq!(rx.front().unwrap_err(), RecvError::Empty);
        });
        assert_eq!(ring_b.holders(), (0, 0));
    }
}
