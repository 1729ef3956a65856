//! Lock-free single-producer single-consumer rings for low-latency messaging, `no_std` and
//! allocation-free, laid out so that a ring can live in memory shared by two processes.
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
mod ring;
mod shared_layout;
mod sync;

pub use api::{Message, MessageReceiver, MessageSender, RecvError, SendError, SendSlot};
pub use dense_ring::{DenseConsumer, DenseProducer, DenseReadChunk, DenseRing, DenseWriteChunk};
pub use layout::{AttachError, ClaimError, RingKind, RingLayout, RING_FORMAT_VERSION, RING_MAGIC};
pub use message_ring::{MessageConsumer, MessageProducer, MessageRing, MessageSlot};
pub use padded::CachePadded;
pub use ring::{Consumer, Drain, Full, Producer, ReadChunk, Ring};
pub use sync::spin_hint;
