//! A walk-through: two processes talking over a channel, from naming it to cleaning up.
//!
//! This module holds no code; it is the guide to read first. The program it builds is
//! `examples/quotes.rs`, which you can run in two terminals, kill with `kill -9` at any moment and
//! restart:
//!
//! ```sh
//! cargo run --release -p shm-channel --example quotes -- publish   # terminal 1
//! cargo run --release -p shm-channel --example quotes -- consume   # terminal 2
//! ```
//!
//! # 1. One dependency, one `use`
//!
//! ```toml
//! [dependencies]
//! shm-channel = { path = "..." }
//! ```
//!
//! [`prelude`](crate::prelude) brings the channel types, the message API's traits and errors
//! (defined in `spsc-core`, re-exported here), the typed-message traits and `bytemuck`'s `Pod`
//! and `Zeroable`, traits and derives; `shm_channel::bytemuck` is the crate itself, so a program
//! needs no `bytemuck` dependency of its own.
//!
//! # 2. Naming and finding the channel
//!
//! A channel is one file (a *segment*) in a folder, `/dev/shm` unless
//! [`ChannelOptions::dir`](crate::ChannelOptions::dir) says otherwise, holding two rings: A→B
//! and B→A. Each process opens one [`End`](crate::End). Both must agree on four things: the
//! name, the folder, the capacity `C` (bytes per ring) and the lane count `L` (see
//! [`Channel`](crate::Channel)). A process built with another `C` or `L` is refused with an
//! error that names both sides' numbers.
//!
//! ```no_run
//! use shm_channel::prelude::*;
//!
//! // Either process may start first: `create_or_open` creates the segment if it is missing
//! // (exactly one of two racing processes does) and otherwise waits, bounded, for its creator.
//! let options = ChannelOptions::new(); // /dev/shm, mode 0600
//! let mut publisher = Channel::<65536>::create_or_open("md_quotes", End::A, &options)?;
//! # Ok::<(), ChannelError>(())
//! ```
//!
//! and in the other process `End::B` of the same name. An end is held by one process at a time:
//! a second live process asking for it gets [`ChannelError::EndTaken`](crate::ChannelError)
//! naming the holder's pid; the same process asking twice gets `EndOpenInThisProcess`.
//!
//! # 3. Typed messages: laying out a message struct
//!
//! [`PodSender::send_pod`](crate::PodSender::send_pod) and
//! [`PodReceiver::front_pod`](crate::PodReceiver::front_pod) move `#[repr(C)]` structs whose
//! every byte pattern is valid (`bytemuck::Pod`): written in place, read in place with no copy.
//! `derive(Pod)` refuses a struct with *hidden padding* (bytes the compiler inserts between or
//! after fields to align them), because padding bytes are uninitialised and must never be sent
//! to another process. Its error reads "structs with padding bytes" or names a size mismatch.
//! Lay a message struct out so that it has none:
//!
//! - `#[repr(C)]`, so both processes agree on the order and offsets of the fields;
//! - order fields from the largest alignment to the smallest (`u64`/`i64`/`f64`, then `u32`,
//!   `u16`, `u8`), and make the size a multiple of the largest alignment with an explicit
//!   `_pad: [u8; N]` field, set to zeros;
//! - only integers, floats and arrays of them: no `bool`, `char`, enums, references or
//!   `Option` (store a `u8` and convert; an invalid value from a buggy peer is then your
//!   check, not undefined behaviour);
//! - alignment at most 8 (payloads are 8-byte aligned; a larger one is refused at compile time);
//! - lock the size, so a change shows in the build, not on the wire.
//!
//! ```
//! use shm_channel::prelude::*;
//!
//! #[repr(C)]
//! #[derive(Clone, Copy, Debug, Pod, Zeroable)]
//! #[bytemuck(crate = "shm_channel::bytemuck")]
//! struct Quote {
//!     seq: u64,     // 8-byte fields first
//!     price: i64,   // fixed point: price × 10⁴
//!     qty: u32,
//!     venue: u16,
//!     side: u8,     // 0 = bid, 1 = ask (a u8, not an enum)
//!     _pad: u8,     // explicit padding: 8 + 8 + 4 + 2 + 1 + 1 = 24, a multiple of 8
//! }
//! const _: () = assert!(core::mem::size_of::<Quote>() == 24);
//! ```
//!
//! Give each message type its own tag (the `u16` beside every message) and check it on
//! receipt: [`PodReceiver::front_pod`](crate::PodReceiver::front_pod) refuses a message of the
//! wrong size with the tag it had, and leaves it unpopped.
//!
//! # 4. Waiting: busy-poll, yield or block, and how to choose `spin_first`
//!
//! [`Receiver::recv_pod_wait`](crate::Receiver::recv_pod_wait),
//! [`Receiver::recv_wait`](crate::Receiver::recv_wait) and, for a full ring,
//! [`Sender::send_pod_wait`](crate::Sender::send_pod_wait) /
//! [`Sender::alloc_wait`](crate::Sender::alloc_wait) wait as a
//! [`WaitStrategy`](crate::WaitStrategy) says:
//!
//! - `BusyPoll`: the lowest latency (a round trip costs little more than the two cache-line
//!   transfers it needs), and one core kept at 100%. For the hot path of a trading engine on
//!   dedicated cores.
//! - `SpinThenYield { spins }`: polls, then yields between polls; for a receiver that shares its
//!   core but must still answer quickly.
//! - `Block { spin_first }`: polls `spin_first` times, then sleeps on a futex in the segment; no
//!   CPU while idle, but a sleeping receiver costs a `futex_wake` system call on the sender's
//!   side and a scheduler wake-up (typically 5-50 µs) on its own.
//!
//! `spin_first` decides which of the two you pay for most messages. A user's request/reply
//! program measured a 40 µs mean round trip with `Block { spin_first: 0 }` and 0.2 µs with
//! `spin_first: 1000`: with 0, the receiver is asleep whenever the next message comes, so every
//! message pays the wake-up; with 1000 polls the reply arrives while it still spins. A poll is
//! a look at the ring plus the CPU's spin hint (`pause` on x86), so its length depends on the
//! CPU: on the AMD EPYC (Zen 4 class) machine this crate is measured on, 100 polls last about
//! 2.6 µs, 1000 about 33 µs and 10 000 about 0.4 ms (a quick loop of `spin_loop` and
//! `is_empty`; the `pause` instruction dominates). Choose it from the gap you expect between
//! messages:
//!
//! - replies and bursts that follow within tens of microseconds: enough polls to cover the usual
//!   gap (`spin_first ≈ gap ÷ poll time`, e.g. 1000 for about 30 µs here), paying that much CPU
//!   per idle spell;
//! - a stream that idles for milliseconds between messages: 0 - 100, since the spinning would be
//!   wasted and the wake-up is small beside the gap;
//! - measure yours: the `pingpong` example prints round-trip percentiles for busy-polling and
//!   blocking waits on your machine.
//!
//! A timeout ([`WaitOptions::timeout`](crate::WaitOptions::timeout)) bounds every wait; without
//! one a wait ends only with a message or a gone peer.
//!
//! # 5. Liveness: knowing the peer is there
//!
//! Every wait checks, every [`WaitOptions::liveness_check`](crate::WaitOptions::liveness_check) interval, the
//! process holding the other side of the ring: a dead process (or a later one given its pid)
//! ends the wait with `Disconnected`, *after* every message it pushed has been delivered (pop is
//! the commit). A process that lives but hangs is caught by heartbeats: the peer calls
//! [`Endpoint::heartbeat`](crate::Endpoint::heartbeat)`(monotonic_nanos())` periodically and the
//! waiter sets [`WaitOptions::heartbeat_limit`](crate::WaitOptions::heartbeat_limit). Outside a
//! wait, [`Endpoint::peer_alive`](crate::Endpoint::peer_alive) and
//! [`Endpoint::peer_heartbeat_age`](crate::Endpoint::peer_heartbeat_age) tell the same.
//!
//! A restarted process opens its end again and takes it over from the dead holder: everything
//! the dead process pushed and the peer has not popped is still there, and everything it had
//! not popped is delivered to its successor. `Disconnected` is therefore not final: keep waiting
//! (after a short pause) for a peer you expect back, as `examples/quotes.rs` does.
//!
//! # 6. Clean-up, on the happy and the unhappy path
//!
//! - [`Endpoint::close_and_remove_if_last`](crate::Endpoint::close_and_remove_if_last): close
//!   this end and remove the file if no other process has it open; whichever end closes last
//!   removes it.
//! - [`ChannelOptions::remove_on_close`](crate::ChannelOptions::remove_on_close)`(true)`: the
//!   same whenever the end is dropped, unwinding from a panic included.
//! - `kill -9`, an abort or a power cut runs no code: the file stays, **on purpose**. It holds
//!   the queued messages a restarted process will deliver. Files nobody will reopen are removed
//!   with [`Segment::reclaim_stale`](crate::Segment::reclaim_stale), which never removes a file a
//!   live process has open, nor anything that is not a segment.
//!
//! # 7. `fork`
//!
//! A child made by `fork` (without `exec`) inherits a copy of its parent's memory, including any
//! `Endpoint`, and the parent's open segment files. The parent still holds its ends; the copies
//! in the child are not ends the child holds:
//!
//! - the child must not *use* an inherited endpoint (sending or receiving on it would make two
//!   processes act as one ring side);
//! - dropping the inherited copies in the child is harmless: they see that they belong to
//!   another process and leave the parent's claims, owner records and wait cells alone (the
//!   file is not removed either, even with `remove_on_close`);
//! - the child may open ends of its own, with the usual rules: an end its live parent holds is
//!   refused, any other end it opens is recorded under the child's own pid and start time, so no
//!   contender mistakes the live child for a dead process;
//! - the inherited file descriptors keep the segment "in use" for `reclaim_stale` while the
//!   child lives, which is right: the child has the segment mapped.
