//! The duplex channel: one segment holding a header and two [`MessageRing`]s, A→B and B→A.
//!
//! Each process opens one [`End`] and gets an [`Endpoint`]: a [`Sender`] on its outgoing ring and
//! a [`Receiver`] on its incoming one, implementing the `spsc-core` message API. The ring sides
//! are claimed with the process id, so a second process (or a second handle in this one) cannot
//! take an end a live process holds; an end held by a dead process is taken over, keeping every
//! message already pushed.
//!
//! # Why the handles are sound
//!
//! `MessageProducer` and `MessageConsumer` borrow their ring, and the ring lives in a mapping.
//! [`Sender`] and [`Receiver`] each hold, besides the ring handle, an `Arc` to the
//! [`Segment`] that owns the mapping, and declare the handle *before* the `Arc`, so Rust drops
//! the handle (whose `Drop` releases its claim by writing into the ring) while the mapping is
//! still there. The handles are created with a lifetime of `'static`, which is a lie the types
//! never reveal: the fields are private, every method hands out borrows tied to `&self` or
//! `&mut self`, and a mapping never moves, even when the `Segment` value does. Swapping two
//! `Sender`s swaps their `Arc`s with them, so each handle always travels with its own mapping.

use core::fmt;
use core::mem::ManuallyDrop;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use spsc_core::{AttachError, MessageRing, RingLayout};

use crate::claim::{claim, Claimant};
use crate::endpoint::{Attachment, Endpoint};
use crate::header::{Direction, End, HeaderError, RingPlacement, SegmentHeader, HEADER_SIZE};
use crate::name::{NameError, SegmentName};
use crate::pid::{current_pid, current_start_time};
use crate::receiver::Receiver;
use crate::segment::{Segment, SegmentError, SegmentOptions};
use crate::sender::Sender;
use crate::wait::Parker;

/// How a channel's segment is found and created.
#[derive(Clone, Debug, Default)]
pub struct ChannelOptions {
    segment: SegmentOptions,
    end_names: Option<[SegmentName; 2]>,
    remove_on_close: bool,
}

impl ChannelOptions {
    /// Default options: folder `/dev/shm`, mode 0600, 2 s to wait for a creator.
    pub fn new() -> Self {
        Self::default()
    }

    /// The folder holding the segment file (see [`SegmentOptions::dir`]).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.segment = self.segment.dir(dir);
        self
    }

    /// Permission bits of a created segment (see [`SegmentOptions::mode`]).
    pub fn mode(mut self, mode: u32) -> Self {
        self.segment = self.segment.mode(mode);
        self
    }

    /// How long an opener waits for a creator (see [`SegmentOptions::init_timeout`]).
    pub fn init_timeout(mut self, timeout: Duration) -> Self {
        self.segment = self.segment.init_timeout(timeout);
        self
    }

    /// Names of end A and end B, recorded in the header's session area by whoever creates the
    /// segment (see [`SegmentHeader::end_name`]).
    ///
    /// # Errors
    /// [`NameError`] if either name is invalid.
    pub fn end_names(mut self, a: &str, b: &str) -> Result<Self, NameError> {
        self.end_names = Some([SegmentName::new(a)?, SegmentName::new(b)?]);
        Ok(self)
    }

    /// Removes the segment's file when the last end closes, however it closes: dropped, or
    /// unwound by a panic (off by default). Each end opened with this option, when it closes,
    /// removes the file if no other process has it open, exactly as
    /// [`Endpoint::close_and_remove_if_last`] does, so whichever end closes last removes it.
    /// Messages still queued are discarded with the file.
    ///
    /// Nothing runs when a process is killed (`kill -9`, an abort, `panic = "abort"`, a power
    /// cut): the file stays, on purpose, so that a restarted process reopens its end with every
    /// message still queued. Leftovers nobody will reopen are removed with
    /// [`Segment::reclaim_stale`], which never touches a segment a live process holds.
    ///
    /// ```
    /// use shm_channel::{Channel, ChannelOptions, End};
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let options = ChannelOptions::new().dir(dir.path()).remove_on_close(true);
    /// let result = std::panic::catch_unwind(|| {
    ///     let _a = Channel::<4096>::create_or_open("scratch", End::A, &options).unwrap();
    ///     panic!("the program fails while it holds end A");
    /// });
    /// assert!(result.is_err());
    /// // Unwinding dropped end A, the segment's last user: its file is gone.
    /// assert!(!dir.path().join("scratch").exists());
    /// ```
    pub fn remove_on_close(mut self, remove: bool) -> Self {
        self.remove_on_close = remove;
        self
    }

    /// The segment options these channel options use.
    pub fn segment_options(&self) -> &SegmentOptions {
        &self.segment
    }
}

/// Why an end of a channel could not be opened.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// The segment could not be created, opened or validated.
    Segment(SegmentError),
    /// A ring inside a validated segment was refused.
    Ring {
        /// The segment, as `segment "name" in /folder`.
        segment: String,
        /// Which ring.
        direction: Direction,
        /// Why.
        error: AttachError,
    },
    /// Another live process holds (a side of) that end.
    EndTaken {
        /// The segment, as `segment "name" in /folder`.
        segment: String,
        /// The end asked for.
        end: End,
        /// The ring whose side is held.
        direction: Direction,
        /// The process id holding it.
        holder_pid: u32,
    },
    /// This very process holds that end already, through another [`Endpoint`] (or a half of
    /// one, or a handle it forgot without dropping): an end is opened once per process.
    EndOpenInThisProcess {
        /// The segment, as `segment "name" in /folder`.
        segment: String,
        /// The end asked for.
        end: End,
    },
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Segment(error) => fmt::Display::fmt(error, f),
            Self::Ring {
                segment,
                direction,
                error,
            } => write!(f, "{segment}: {direction}: {error}"),
            Self::EndTaken {
                segment,
                end,
                direction,
                holder_pid,
            } => write!(
                f,
                "{end} of {segment} is held by process {holder_pid}, which is alive ({direction}); \
                 only one process may hold an end at a time: stop that process, or open the \
                 other end"
            ),
            Self::EndOpenInThisProcess { segment, end } => write!(
                f,
                "{end} of {segment} is already open in this process (pid {}); an end is opened \
                 once per process: use the Endpoint you have, or drop it (both halves, if you \
                 split it) before opening the end again",
                std::process::id()
            ),
        }
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Segment(error) => Some(error),
            _ => None,
        }
    }
}

impl From<SegmentError> for ChannelError {
    fn from(error: SegmentError) -> Self {
        Self::Segment(error)
    }
}

impl From<NameError> for ChannelError {
    fn from(error: NameError) -> Self {
        Self::Segment(SegmentError::Name(error))
    }
}

/// How [`Channel::open_end`] finds the segment.
#[derive(Clone, Copy, Debug)]
enum Lookup {
    CreateOrOpen,
    Create,
    Open,
}

/// A duplex channel whose rings each hold `C` bytes of records (a power of two from 64 to 2³¹),
/// each ring spread over `L` lanes: a namespace for opening its ends.
///
/// **Lanes** (`L`, a power of two from 1 to 16; default 1) are `spsc_core::MessageRing`'s: message
/// `k` goes to lane `k % L`, each lane a ring of `C / L` bytes, so consecutive messages never
/// share a cache line and a small message's hand-off touches fewer lines. They lower the latency
/// of small messages under streaming, at the price of a smaller largest message
/// ([`MAX_PAYLOAD`](Self::MAX_PAYLOAD) `= C / L / 2 - 8`) and of the receiver visiting the lanes
/// in turn; one lane keeps the whole ring for large messages. Both ends must use the same `C`
/// and `L`: the segment records both, and an end built otherwise is refused with a
/// [`HeaderError::LayoutMismatch`] that names the two capacities and lane counts. The crate
/// README gives the measured round trips with 1 and 16 lanes.
///
/// Cost of opening: the creator zeroes `2·C` bytes of rings (allow for it in
/// [`ChannelOptions::init_timeout`] with very large rings); nothing else is allocated, and the
/// hot path (`alloc`/`push`, `front`/`pop`) makes no system call and no allocation.
///
/// ```
/// use shm_channel::prelude::*;
///
/// # let dir = tempfile::tempdir().unwrap();
/// let options = ChannelOptions::new().dir(dir.path()); // default: /dev/shm
/// let mut a = Channel::<4096>::create_or_open("doc-example", End::A, &options).unwrap();
/// let mut b = Channel::<4096>::create_or_open("doc-example", End::B, &options).unwrap();
/// a.sender().send(7, b"ping").unwrap();
/// let got = b.receiver().recv_with(|m| (m.tag(), m.payload().to_vec())).unwrap();
/// assert_eq!(got, (7, b"ping".to_vec()));
///
/// // 16 lanes of 4 KiB each: the largest message is 4096 / 16 / 2 - 8 = 120 bytes.
/// assert_eq!(Channel::<65536, 16>::MAX_PAYLOAD, 2040);
/// assert_eq!(Channel::<4096, 16>::MAX_PAYLOAD, 120);
/// // A peer built with another lane count is refused, saying so.
/// let error = Channel::<4096, 16>::open("doc-example", End::A, &options).unwrap_err();
/// assert!(error.to_string().contains("1 lane(s), but this end was built for 4096 bytes in 16"));
/// a.unlink().unwrap();
/// ```
#[derive(Debug)]
pub enum Channel<const C: usize, const L: usize = 1> {}

impl<const C: usize, const L: usize> Channel<C, L> {
    /// Layout of each ring, as recorded (by fingerprint) in the header.
    pub const RING_LAYOUT: RingLayout = MessageRing::<C, L>::LAYOUT;

    const RING_SIZE: usize = core::mem::size_of::<MessageRing<C, L>>();

    /// Size of the segment file: the header, then ring A→B, then ring B→A.
    pub const SEGMENT_SIZE: usize = HEADER_SIZE + 2 * Self::RING_SIZE;

    /// The largest message payload, in bytes.
    pub const MAX_PAYLOAD: u32 = MessageRing::<C, L>::MAX_PAYLOAD;

    const EXPECTED: [RingLayout; 2] = [Self::RING_LAYOUT; 2];

    const PLACEMENTS: [RingPlacement; 2] = [
        RingPlacement {
            offset: HEADER_SIZE,
            size: Self::RING_SIZE,
        },
        RingPlacement {
            offset: HEADER_SIZE + Self::RING_SIZE,
            size: Self::RING_SIZE,
        },
    ];

    /// Opens `end` of the channel in segment `name`, creating the segment if it does not exist.
    /// Race-free: when both ends start at once, one creates and the other waits for it (bounded
    /// by the options' `init_timeout`). An existing segment is validated, never re-initialised:
    /// messages queued in it are delivered.
    ///
    /// # Errors
    /// [`ChannelError::Segment`] for a bad name, a system error or a refused header;
    /// [`ChannelError::Ring`] for a refused ring; [`ChannelError::EndTaken`] if another live
    /// process holds that end, [`ChannelError::EndOpenInThisProcess`] if this one does
    /// holds that end.
    pub fn create_or_open(
        name: &str,
        end: End,
        options: &ChannelOptions,
    ) -> Result<Endpoint<C, L>, ChannelError> {
        Self::open_end(name, end, options, Lookup::CreateOrOpen)
    }

    /// Creates the segment and opens `end`; fails if the segment exists.
    ///
    /// # Errors
    /// [`SegmentError::AlreadyExists`] (in [`ChannelError::Segment`]), else as
    /// [`create_or_open`](Self::create_or_open).
    pub fn create(
        name: &str,
        end: End,
        options: &ChannelOptions,
    ) -> Result<Endpoint<C, L>, ChannelError> {
        Self::open_end(name, end, options, Lookup::Create)
    }

    /// Opens `end` of an existing segment; fails if it does not exist.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`] (in [`ChannelError::Segment`]), else as
    /// [`create_or_open`](Self::create_or_open).
    pub fn open(
        name: &str,
        end: End,
        options: &ChannelOptions,
    ) -> Result<Endpoint<C, L>, ChannelError> {
        Self::open_end(name, end, options, Lookup::Open)
    }

    /// Finds (or creates) the segment as `lookup` says, then attaches `end`.
    fn open_end(
        name: &str,
        end: End,
        options: &ChannelOptions,
        lookup: Lookup,
    ) -> Result<Endpoint<C, L>, ChannelError> {
        let size = Self::SEGMENT_SIZE as u64;
        let (seg_options, expected) = (&options.segment, &Self::EXPECTED);
        let init = |segment: &Segment| Self::init(segment, options);
        let (segment, placements) = match lookup {
            Lookup::CreateOrOpen => {
                Segment::create_or_open(name, size, seg_options, expected, init)?
            }
            Lookup::Create => Segment::create_ready(name, size, seg_options, expected, init)?,
            Lookup::Open => Segment::open_ready(name, seg_options, expected)?,
        };
        // The header validated as self-consistent; a channel's creator also always puts the
        // rings in the same places and sizes the file to fit them exactly. A header that
        // describes another arrangement (slack, a gap, a moved ring) was not written by this
        // format's creator: refuse it rather than guess what the extra bytes are for.
        if placements != Self::PLACEMENTS || segment.len() != Self::SEGMENT_SIZE {
            return Err(ChannelError::Segment(segment.header_error(
                HeaderError::Impossible {
                    reason: "rings are not laid out as a channel of this capacity lays them out",
                },
            )));
        }
        Self::attach(segment, placements, end, options.remove_on_close)
    }

    /// Removes segment `name` from the options' folder. Processes that have it open keep using
    /// it; the next `create_or_open` makes a fresh one.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`] if there is no such segment, or a system error.
    pub fn unlink(name: &str, options: &ChannelOptions) -> Result<(), ChannelError> {
        Ok(Segment::unlink_name(name, &options.segment)?)
    }

    /// The creator's initialisation: both rings, and the end names if given.
    fn init(
        segment: &Segment,
        options: &ChannelOptions,
    ) -> Result<[RingPlacement; 2], SegmentError> {
        debug_assert!(segment.len() >= Self::SEGMENT_SIZE);
        for placement in Self::PLACEMENTS {
            // SAFETY: the segment was created with SEGMENT_SIZE bytes, so `offset + size` is
            // inside the mapping, which is valid for reads and writes while `segment` lives. The
            // header still says `initialising`, so no opener touches the rings during the call.
            let result = unsafe {
                MessageRing::<C, L>::init_in_place(
                    segment.as_ptr().add(placement.offset),
                    placement.size,
                )
            };
            if result.is_err() {
                return Err(segment.header_error(HeaderError::Impossible {
                    reason: "ring placement unusable",
                }));
            }
        }
        if let Some([a, b]) = &options.end_names {
            let header = segment.header().map_err(|e| segment.header_error(e))?;
            header.set_end_name(End::A, a);
            header.set_end_name(End::B, b);
        }
        Ok(Self::PLACEMENTS)
    }

    /// Attaches both rings of a validated segment and claims `end`'s sides of them.
    fn attach(
        segment: Segment,
        placements: [RingPlacement; 2],
        end: End,
        remove_on_close: bool,
    ) -> Result<Endpoint<C, L>, ChannelError> {
        let pid = current_pid();
        let ring = |direction: Direction| -> Result<&'static MessageRing<C, L>, ChannelError> {
            let placement = placements[direction.index()];
            // SAFETY: `validate` checked the placement lies inside the mapping (aligned, in
            // bounds); the mapping is valid for reads and writes and shared only with processes
            // using this crate's handles. The `'static` lifetime is confined to the private
            // handle fields of `Sender`/`Receiver`, which drop before the mapping's last `Arc`
            // (module docs).
            unsafe {
                MessageRing::<C, L>::attach(segment.as_ptr().add(placement.offset), placement.size)
            }
            .map_err(|error| ChannelError::Ring {
                segment: segment.describe(),
                direction,
                error,
            })
        };
        let outgoing = ring(end.outgoing())?;
        let incoming = ring(end.incoming())?;
        let header: *const SegmentHeader = segment.header().map_err(|e| segment.header_error(e))?;
        // SAFETY: as for the rings: the header lies at the start of the mapping and the reference
        // is kept only in fields that drop before the mapping (or beside it, without drop glue).
        let header: &'static SegmentHeader = unsafe { &*header };
        let attachment = Arc::new(Attachment {
            header,
            segment: ManuallyDrop::new(segment),
            end,
            pid: pid.get(),
            marked: core::sync::atomic::AtomicBool::new(false),
            remove_on_close,
        });
        let claimant = Claimant {
            header,
            end,
            segment: attachment.segment.describe(),
            pid,
            start: current_start_time(),
            ticket: core::cell::Cell::new(None),
        };
        // Declared after `attachment`, so on an early return they drop first.
        let producer = claim(
            &claimant,
            end.outgoing(),
            || outgoing.claim_producer(pid),
            |dead| {
                // SAFETY: `claimant.verdict` found the process that claimed the side as `dead`
                // gone just before: no process has that pid, or the end's record names `dead`
                // with a start time other than that of the process now bearing the pid (a later
                // process, possibly this one, was given the pid after the holder exited). So the
                // holder never touches the ring again. Nobody else can be taking the side over at
                // the same time: a taker whose evidence was that record (as is every taker with
                // the holder's own pid, whose compare-and-swap from `dead` to `dead` would not
                // exclude anyone) first swaps the recorded start time, which only one of them
                // wins; a taker who judged by the pid alone moves the side word away from
                // `dead`, and `take_over_producer`'s compare-and-swap lets only one do that.
                unsafe { outgoing.take_over_producer(dead, pid) }
            },
        )?;
        let consumer = claim(
            &claimant,
            end.incoming(),
            || incoming.claim_consumer(pid),
            |dead| {
                // SAFETY: as for the producer: `claimant.verdict` found `dead` gone, and it lets
                // only one taker act on that finding.
                unsafe { incoming.take_over_consumer(dead, pid) }
            },
        )?;
        header.mark_attached(end, pid.get(), claimant.start);
        claimant.ticket.set(None);
        attachment
            .marked
            .store(true, core::sync::atomic::Ordering::Relaxed);
        Ok(Endpoint {
            sender: Sender {
                producer: ManuallyDrop::new(producer),
                wait: header.wait_cell(end.outgoing()),
                space: ManuallyDrop::new(Parker::new(header.space_cell(end.outgoing()))),
                ring: outgoing,
                counters: header.send_counters(end.outgoing()),
                allocs: 0,
                full_seen: false,
                attachment: Arc::clone(&attachment),
            },
            receiver: Receiver {
                consumer: ManuallyDrop::new(consumer),
                parker: ManuallyDrop::new(Parker::new(header.wait_cell(end.incoming()))),
                space: header.space_cell(end.incoming()),
                ring: incoming,
                counters: header.recv_counters(end.incoming()),
                attachment,
            },
        })
    }
}
