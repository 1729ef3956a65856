//! Cache-line isolation for the indices the two sides write.

use core::ops::Deref;

/// Aligns and pads `T` to 128 bytes.
///
/// 128 rather than 64 because x86 CPUs prefetch cache lines in adjacent pairs: two hot values 64
/// bytes apart still ping-pong between cores. Being `#[repr(C)]` the wrapper has a fixed layout,
/// so it can sit in memory shared by two processes.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct CachePadded<T>(pub T);

impl<T> Deref for CachePadded<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}
