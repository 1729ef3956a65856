//! A duplex message channel between two processes, in one shared-memory segment: the
//! shared-memory transport of the workspace's message API ([`spsc_core::MessageSender`] /
//! [`spsc_core::MessageReceiver`]), so the same generic code runs in-process and cross-process.
//!
//! - [`Channel::create_or_open`] opens one [`End`] of the channel in a named segment, creating
//!   the segment if needed (race-free when both ends start at once) in `/dev/shm` or a folder of
//!   the caller's choice, with owner-only permissions by default.
//! - The [`Endpoint`] holds a [`Sender`] on this end's outgoing ring and a [`Receiver`] on its
//!   incoming one. A live process holding an end excludes any other; an end left by a dead
//!   process is taken over, with every message already pushed still there.
//! - The [`SegmentHeader`] is validated before any ring is touched: a wrong, truncated, stale or
//!   corrupt file is a typed [`HeaderError`], never a panic or a re-initialisation. It carries
//!   per-direction counters ([`DirectionStats`]), per-end liveness, and a session area for upper
//!   layers.
//! - [`Receiver::recv_wait`] waits for the next message by busy-polling, spinning then
//!   yielding, or blocking on a futex in the segment ([`WaitStrategy`]); the sender pays a
//!   syscall only when the receiver sleeps, and a waiting receiver notices a dead or silent peer
//!   within a configurable interval ([`wait`] module). [`Sender::alloc_wait`] does the same for
//!   a sender facing a full ring: the receiver's pops wake it, and it notices a receiver that is
//!   gone.
//! - An end's owner is recorded as a pid and its start time, so a restarted process given the
//!   dead holder's pid (common in containers) takes its end back, and a pid reused by another
//!   process never keeps a dead holder's end.
//! - [`PodSender`] / [`PodReceiver`] send and receive `#[repr(C)]` plain-old-data structs in
//!   place, with no copy on receive; [`Sender::send_pod_wait`] / [`Receiver::recv_pod_wait`]
//!   wait for room or for a message.
//! - [`prelude`] brings everything a program names in one `use`, `bytemuck`'s derives included.
//! - [`journal`]: a persistent journal of timestamped frames in memory-mapped page files, one
//!   writer (a file lock, no daemon) and any number of read-only readers at their own pace,
//!   seeks by sequence number or time, merge by time, retention with lag reports, crash
//!   recovery; the backbone of `shm-server`'s publish/subscribe.
//!
//! **New here? Read the [`tutorial`]**: two processes, typed messages, blocking waits and how to
//! choose `spin_first`, liveness, clean-up, and what `fork` does to an end. Its program is
//! `examples/quotes.rs`, which you can kill and restart at will.
//!
//! ```
//! use shm_channel::prelude::*;
//!
//! # let dir = tempfile::tempdir().unwrap();
//! // Normally each end is a separate process; the default folder is /dev/shm.
//! let options = ChannelOptions::new().dir(dir.path());
//! let mut a = Channel::<65536>::create_or_open("gw_risk", End::A, &options)?;
//! let mut b = Channel::<65536>::create_or_open("gw_risk", End::B, &options)?;
//!
//! // Write in place, then publish.
//! let mut slot = a.sender().alloc(5, 1)?;
//! slot.payload_mut().copy_from_slice(b"hello");
//! slot.push();
//!
//! // Read in place; pop is the commit.
//! let message = b.receiver().front()?;
//! assert_eq!((message.tag(), message.payload()), (1, &b"hello"[..]));
//! b.receiver().pop()?;
//!
//! // Remove the file once both sides are done (or leave it to be reopened).
//! a.unlink()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod channel;
mod claim;
mod endpoint;
mod header;
pub mod journal;
mod name;
mod pid;
mod receiver;
mod segment;
mod segment_error;
mod sender;
pub mod tutorial;
mod typed;
pub mod wait;

pub use channel::{Channel, ChannelError, ChannelOptions};
pub use endpoint::Endpoint;
pub use header::{
    Direction, DirectionStats, End, HeaderError, Identity, Liveness, RecvCounters, RingDescriptor,
    RingPlacement, SegmentHeader, SendCounters, SessionArea, WaitWords, ABI_VERSION, ABSENT_RING,
    HEADER_SIZE, RING_ALIGN, SEGMENT_MAGIC,
};
pub use name::{NameError, SegmentName, MAX_NAME_LEN};
pub use pid::{is_process_alive, is_process_alive_since, process_start_time};
pub use receiver::Receiver;
pub use segment::{Reclaim, Segment, SegmentError, SegmentOptions, DEFAULT_DIR};
pub use sender::{ChannelSlot, Sender};
pub use typed::{PodReceiver, PodRecvError, PodSender, PodSlot};
pub use wait::{monotonic_nanos, WaitOptions, WaitStats, WaitStrategy};

/// The `bytemuck` crate this one is built with, re-exported so that typed messages need no
/// dependency of their own: derive with `#[derive(Pod, Zeroable)]` and
/// `#[bytemuck(crate = "shm_channel::bytemuck")]` (see [`prelude`]).
pub use bytemuck;

pub mod prelude {
    //! Everything a program using a channel names, in one `use shm_channel::prelude::*;`: the
    //! channel types and options, the message API's traits and errors (from `spsc-core`), the
    //! typed-message traits, and `bytemuck`'s `Pod` / `Zeroable` (traits and derives).
    //!
    //! ```
    //! use shm_channel::prelude::*;
    //!
    //! #[repr(C)]
    //! #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
    //! #[bytemuck(crate = "shm_channel::bytemuck")] // so no direct bytemuck dependency is needed
    //! struct Quote {
    //!     price: u64,
    //!     qty: u32,
    //!     side: u32,
    //! }
    //!
    //! # let dir = tempfile::tempdir().unwrap();
    //! let options = ChannelOptions::new().dir(dir.path());
    //! let mut a = Channel::<4096>::create_or_open("prelude", End::A, &options)?;
    //! let mut b = Channel::<4096>::create_or_open("prelude", End::B, &options)?;
    //! a.sender().send_pod(1, &Quote { price: 101, qty: 5, side: 0 })?;
    //! let (tag, quote) = b.receiver().recv_pod::<Quote>()?;
    //! assert_eq!((tag, quote.price), (1, 101));
    //! # Ok::<(), Box<dyn std::error::Error>>(())
    //! ```
    pub use crate::{
        Channel, ChannelError, ChannelOptions, End, Endpoint, PodReceiver, PodRecvError, PodSender,
        Receiver, Sender, WaitOptions, WaitStrategy,
    };
    pub use bytemuck::{Pod, Zeroable};
    pub use spsc_core::{Message, MessageReceiver, MessageSender, RecvError, SendError, SendSlot};
}
