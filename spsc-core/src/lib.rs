//! Lock-free single-producer single-consumer rings for low-latency messaging, `no_std` and
//! allocation-free, laid out so that a ring can live in memory shared by two processes.
//!
//! # Which ring do I pick
//!
//! | you need | pick | measured (`report` bench; AMD EPYC family 25 model 17, Zen 4, near placement) | largest message |
//! |---|---|---|---|
//! | the lowest latency, single push and pop | [`Ring<T, N>`](Ring) | `u64` round trip 1.08–1.09× the two-line floor (`rtrb` 1.26–1.29×); `[u8; 64]` 1.30–1.49× the same-bytes floor with 1024 slots, 1.14–1.30× with 64; single-op `u64` streaming 0.99–1.20× `rtrb` | one `T` |
//! | streaming in batches | [`DenseRing<T, N>`](DenseRing) | 64-byte batches 0.95–1.08× `rtrb`, 0.96–1.09× the copy floor; `u64` batches 0.96–1.20× the copy floor, 0.80–1.04× `rtrb` | one `T` |
//! | variable-length messages, large ones or bulk | [`MessageRing<C>`](MessageRing) (one lane) | 64 B round trip 1.55–1.63× the same-bytes floor; 8 B 1.15–1.17× the two-line floor | `C/2 - 8` bytes |
//! | variable-length messages, latency first | [`MessageRing<C, 16>`](MessageRing) | 64 B round trip 1.34–1.50× the same-bytes floor (8-byte messages are faster with one lane) | `C/L/2 - 8` bytes ([`MessageRing::MAX_PAYLOAD`]) |
//!
//! Each figure is the range of five runs' medians; the floors are raw cross-thread exchanges that
//! move the same bytes and nothing else (the two-line floor one word each way, the same-bytes
//! floor a 64-byte payload and a sequence word, the copy floor one `memcpy` and one index store
//! per batch). Other machines and placements give other ratios: the crate's README and
//! `BENCHMARKS.md` have the tables, the method and why.
//!
//! # The crate
//!
//! - [`Ring<T, N>`](Ring): `N` elements of type `T`; single and batch push/pop. Each element
//!   carries its own publication stamp, so a hand-off moves one cache line: the ring for latency.
//! - [`DenseRing<T, N>`](DenseRing): the same operations over a plain array published by index
//!   (rtrb's design): denser, so faster in batches, and its chunks are slices (written and read
//!   in place); a hand-off moves two lines. The ring for streaming in batches.
//! - [`MessageRing<C, L>`](MessageRing): variable-length messages in a `C`-byte buffer, written
//!   and read in place (*alloc, write, push*; *front, read, pop*), optionally spread round `L`
//!   lanes so that consecutive messages never share a cache line (lower latency, smaller largest
//!   message).
//! - [`MessageSender`] / [`MessageReceiver`]: the message API that every transport of this
//!   workspace implements, so generic code runs on any of them. The `conformance` feature
//!   exposes the test suite every implementation must pass (`conformance_suite!`).
//!
//! All three rings are `#[repr(C)]`, hold indices rather than pointers, start with a header that
//! describes their [`RingLayout`], and can be initialised in caller-supplied memory
//! ([`Ring::init_in_place`]) and attached to later from another address space
//! ([`Ring::attach`]), which validates what it finds.
//!
//! ```
//! use spsc_core::{MessageReceiver, MessageRing, MessageSender, SendSlot};
//!
//! let mut ring = MessageRing::<4096>::new();
//! let (mut tx, mut rx) = ring.split();
//!
//! // Write in place, then publish.
//! let mut slot = tx.alloc(16, 42).unwrap();
//! slot.payload_mut().copy_from_slice(&[0xAB; 16]);
//! slot.push();
//!
//! // Read in place, then release.
//! let message = rx.front().unwrap();
//! assert_eq!(message.tag(), 42);
//! assert_eq!(message.payload(), &[0xAB; 16]);
//! rx.pop().unwrap();
//! ```
#![cfg_attr(not(any(test, loom, feature = "conformance")), no_std)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod api;
mod blocks;
#[cfg(feature = "conformance")]
pub mod conformance;
mod dense_ring;
mod layout;
mod message_ring;
mod padded;
mod read_ahead;
mod ring;
mod shared_layout;
mod sync;

pub use api::{Message, MessageReceiver, MessageSender, RecvError, SendError, SendSlot};
pub use dense_ring::{DenseConsumer, DenseProducer, DenseReadChunk, DenseRing, DenseWriteChunk};
pub use layout::{AttachError, ClaimError, RingKind, RingLayout, RING_FORMAT_VERSION, RING_MAGIC};
pub use message_ring::{MessageConsumer, MessageProducer, MessageRing, MessageSlot};
pub use padded::CachePadded;
pub use read_ahead::{PublishedRun, ReadAhead};
pub use ring::{Consumer, Drain, Full, Producer, ReadChunk, Ring};
pub use sync::spin_hint;
