//! Compile-time locks on the in-memory layout of the rings.
//!
//! Two processes built separately must agree on every offset; a change that moves a field fails
//! the build here, and must come with a bump of [`RING_FORMAT_VERSION`](crate::RING_FORMAT_VERSION).
//! (Loom builds replace the atomics with larger model types, so the checks apply to real builds.)

#[cfg(not(loom))]
mod locked {
    use core::mem::{align_of, offset_of, size_of};

    use static_assertions::{const_assert, const_assert_eq};

    use crate::layout::{RingControl, RingLayout};
    use crate::{DenseRing, MessageRing, Ring};

    const_assert_eq!(size_of::<RingLayout>(), 40);
    const_assert_eq!(size_of::<RingControl>(), 52);
    const_assert!(size_of::<RingControl>() <= 128);

    // The fixed ring: header line, consumer index line, then the blocks: `N` slot shapes (stamp
    // and element) and a spare line, rounded up to the ring's 128-byte alignment.
    const_assert_eq!(align_of::<Ring<u64, 8>>(), 128);
    const_assert_eq!(offset_of!(Ring<u64, 8>, head), 128);
    const_assert_eq!(offset_of!(Ring<u64, 8>, blocks), 256);
    const_assert_eq!(size_of::<Ring<u64, 8>>(), 256 + 8 * 16 + 128);
    const_assert_eq!(size_of::<Ring<u32, 4>>(), 384);
    // Small elements share a line under one stamp; large ones have a block each.
    const_assert_eq!(Ring::<u64, 8>::LAYOUT.block_len, 7);
    const_assert_eq!(Ring::<u64, 8>::LAYOUT.block_size, 64);
    const_assert_eq!(Ring::<u32, 1024>::LAYOUT.block_len, 15);
    const_assert_eq!(Ring::<u8, 1024>::LAYOUT.block_len, 60);
    const_assert_eq!(Ring::<u64, 4>::LAYOUT.block_len, 4);
    const_assert_eq!(Ring::<[u8; 64], 8>::LAYOUT.block_len, 1);
    const_assert_eq!(Ring::<[u8; 64], 8>::LAYOUT.block_size, 68);
    const_assert_eq!(Ring::<[u8; 16], 8>::LAYOUT.block_len, 1);
    // One-element blocks of a line or more are spread over 16 regions in rings of more than 16;
    // smaller and dense ones never.
    const_assert_eq!(Ring::<[u8; 64], 1024>::LAYOUT.block_spread, 16);
    const_assert_eq!(Ring::<[u8; 57], 1024>::LAYOUT.block_spread, 16);
    const_assert_eq!(Ring::<[u8; 56], 1024>::LAYOUT.block_spread, 1);
    const_assert_eq!(Ring::<[u8; 16], 1024>::LAYOUT.block_spread, 1);
    const_assert_eq!(Ring::<[u8; 64], 16>::LAYOUT.block_spread, 1);
    const_assert_eq!(Ring::<u64, 1024>::LAYOUT.block_spread, 1);
    const_assert_eq!(MessageRing::<4096>::LAYOUT.block_spread, 1);

    // The message ring: header line, consumer index line, then the byte buffer.
    const_assert_eq!(align_of::<MessageRing<64>>(), 128);
    const_assert_eq!(offset_of!(MessageRing<64>, heads), 128);
    const_assert_eq!(offset_of!(MessageRing<64>, buf), 256);
    const_assert_eq!(size_of::<MessageRing<4096>>(), 256 + 4096);
    const_assert_eq!(size_of::<MessageRing<64>>(), 256 + 128);
    const_assert_eq!(MessageRing::<4096>::MAX_PAYLOAD, 2048 - 8);
    // Lanes: the spread is the lane count; the indices share the index line, so the layout is
    // otherwise that of one lane; the largest message is set by a lane.
    const_assert_eq!(MessageRing::<4096, 16>::LAYOUT.block_spread, 16);
    const_assert_eq!(offset_of!(MessageRing<4096, 16>, heads), 128);
    const_assert_eq!(offset_of!(MessageRing<4096, 16>, buf), 256);
    const_assert_eq!(size_of::<MessageRing<4096, 16>>(), 256 + 4096);
    const_assert_eq!(MessageRing::<4096, 16>::MAX_PAYLOAD, 128 - 8);
    const_assert_eq!(MessageRing::<65536, 16>::MAX_PAYLOAD, 2048 - 8);

    // The dense ring: header line, consumer index line, producer index line, then exactly the
    // array of elements (rounded up to the ring's alignment).
    const_assert_eq!(align_of::<DenseRing<u64, 8>>(), 128);
    const_assert_eq!(offset_of!(DenseRing<u64, 8>, head), 128);
    const_assert_eq!(offset_of!(DenseRing<u64, 8>, tail), 256);
    const_assert_eq!(offset_of!(DenseRing<u64, 8>, slots), 384);
    const_assert_eq!(size_of::<DenseRing<[u8; 64], 1024>>(), 384 + 64 * 1024);
    const_assert_eq!(size_of::<DenseRing<u64, 8>>(), 384 + 128);
    const_assert_eq!(DenseRing::<[u8; 64], 1024>::LAYOUT.block_size, 64);
    const_assert_eq!(DenseRing::<[u8; 64], 1024>::LAYOUT.data_offset, 384);
}
