//! The atomics and cells the rings are built from.
//!
//! Normal builds use `core`; `--cfg loom` swaps in loom's model-checked types so the very same
//! protocol code is explored by the loom models in `tests/loom.rs`. (Cells differ in layout
//! between the two, so each ring keeps its own per-build storage: `blocks.rs`, `message_ring.rs`.)

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, Ordering};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU32, Ordering};

/// What a waiting side does between two polls: a CPU pause normally, a scheduling point under
/// loom (which would otherwise explore an endless spin).
#[inline(always)]
pub fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}
