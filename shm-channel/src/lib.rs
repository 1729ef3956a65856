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
//!   place, with no copy on receive.
//!
//! ```
//! use shm_channel::{Channel, ChannelOptions, End};
//! use spsc_core::{MessageReceiver, MessageSender, SendSlot};
//!
//! # let dir = tempfile::tempdir().unwrap();
//! // Normally each end is a separate process; the default folder is /dev/shm.
//! let options = ChannelOptions::new().dir(dir.path());
//! let mut a = Channel::<65536>::create_or_open("gw_risk", End::A, &options).unwrap();
//! let mut b = Channel::<65536>::create_or_open("gw_risk", End::B, &options).unwrap();
//!
//! // Write in place, then publish.
//! let mut slot = a.sender().alloc(5, 1).unwrap();
//! slot.payload_mut().copy_from_slice(b"hello");
//! slot.push();
//!
//! // Read in place; pop is the commit.
//! let message = b.receiver().front().unwrap();
//! assert_eq!((message.tag(), message.payload()), (1, &b"hello"[..]));
//! b.receiver().pop().unwrap();
//!
//! // Remove the file once both sides are done (or leave it to be reopened).
//! a.unlink().unwrap();
//! ```
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod channel;
mod claim;
mod endpoint;
mod header;
mod name;
mod pid;
mod receiver;
mod segment;
mod segment_error;
mod sender;
mod typed;
pub mod wait;

pub use channel::{Channel, ChannelError, ChannelOptions};
pub use endpoint::Endpoint;
pub use header::{
    Direction, DirectionStats, End, HeaderError, Identity, Liveness, RecvCounters, RingDescriptor,
    RingPlacement, SegmentHeader, SendCounters, SessionArea, WaitWords, ABI_VERSION, HEADER_SIZE,
    RING_ALIGN, SEGMENT_MAGIC,
};
pub use name::{NameError, SegmentName, MAX_NAME_LEN};
pub use pid::{is_process_alive, is_process_alive_since, process_start_time};
pub use receiver::Receiver;
pub use segment::{Reclaim, Segment, SegmentError, SegmentOptions, DEFAULT_DIR};
pub use sender::{ChannelSlot, Sender};
pub use typed::{PodReceiver, PodRecvError, PodSender, PodSlot};
pub use wait::{monotonic_nanos, WaitOptions, WaitStats, WaitStrategy};
