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
use core::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use spsc_core::{
    AttachError, ClaimError, Message, MessageConsumer, MessageProducer, MessageReceiver,
    MessageRing, MessageSender, MessageSlot, RecvError, RingLayout, SendError, SendSlot,
};

use crate::header::{
    bump, Direction, DirectionStats, End, HeaderError, RecvCounters, RingPlacement, SegmentHeader,
    SendCounters, HEADER_SIZE,
};
use crate::name::{NameError, SegmentName};
use crate::pid::{current_pid, current_start_time, is_process_alive, is_process_alive_since};
use crate::segment::{Reclaim, Segment, SegmentError, SegmentOptions};
use crate::wait::{monotonic_nanos, Parker, WaitCell, WaitOptions, WaitOutcome};

/// How a channel's segment is found and created.
#[derive(Clone, Debug, Default)]
pub struct ChannelOptions {
    segment: SegmentOptions,
    end_names: Option<[SegmentName; 2]>,
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
        /// Which ring.
        direction: Direction,
        /// Why.
        error: AttachError,
    },
    /// A live process holds (a side of) that end.
    EndTaken {
        /// The end asked for.
        end: End,
        /// The ring whose side is held.
        direction: Direction,
        /// The process id holding it (possibly this process).
        holder_pid: u32,
    },
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Segment(error) => fmt::Display::fmt(error, f),
            Self::Ring { direction, error } => write!(f, "{direction}: {error}"),
            Self::EndTaken {
                end,
                direction,
                holder_pid,
            } => write!(
                f,
                "{end} of the channel is held by process {holder_pid} ({direction}); only one \
                 process may hold an end at a time"
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

/// A duplex channel whose rings each hold `C` bytes of records (a power of two from 64 to 2³¹):
/// a namespace for opening its ends.
///
/// ```
/// use shm_channel::{Channel, ChannelOptions, End};
/// use spsc_core::{MessageReceiver, MessageSender};
///
/// # let dir = tempfile::tempdir().unwrap();
/// let options = ChannelOptions::new().dir(dir.path()); // default: /dev/shm
/// let mut a = Channel::<4096>::create_or_open("doc-example", End::A, &options).unwrap();
/// let mut b = Channel::<4096>::create_or_open("doc-example", End::B, &options).unwrap();
/// a.sender().send(7, b"ping").unwrap();
/// let got = b.receiver().recv_with(|m| (m.tag(), m.payload().to_vec())).unwrap();
/// assert_eq!(got, (7, b"ping".to_vec()));
/// a.unlink().unwrap();
/// ```
#[derive(Debug)]
pub enum Channel<const C: usize> {}

impl<const C: usize> Channel<C> {
    /// Layout of each ring, as recorded (by fingerprint) in the header.
    pub const RING_LAYOUT: RingLayout = MessageRing::<C>::LAYOUT;

    const RING_SIZE: usize = core::mem::size_of::<MessageRing<C>>();

    /// Size of the segment file: the header, then ring A→B, then ring B→A.
    pub const SEGMENT_SIZE: usize = HEADER_SIZE + 2 * Self::RING_SIZE;

    /// The largest message payload, in bytes.
    pub const MAX_PAYLOAD: u32 = MessageRing::<C>::MAX_PAYLOAD;

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
    /// [`ChannelError::Ring`] for a refused ring; [`ChannelError::EndTaken`] if a live process
    /// holds that end.
    pub fn create_or_open(
        name: &str,
        end: End,
        options: &ChannelOptions,
    ) -> Result<Endpoint<C>, ChannelError> {
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
    ) -> Result<Endpoint<C>, ChannelError> {
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
    ) -> Result<Endpoint<C>, ChannelError> {
        Self::open_end(name, end, options, Lookup::Open)
    }

    /// Finds (or creates) the segment as `lookup` says, then attaches `end`.
    fn open_end(
        name: &str,
        end: End,
        options: &ChannelOptions,
        lookup: Lookup,
    ) -> Result<Endpoint<C>, ChannelError> {
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
            return Err(ChannelError::Segment(SegmentError::Header(
                HeaderError::Impossible {
                    reason: "rings are not laid out as a channel of this capacity lays them out",
                },
            )));
        }
        Self::attach(segment, placements, end)
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
                MessageRing::<C>::init_in_place(
                    segment.as_ptr().add(placement.offset),
                    placement.size,
                )
            };
            if result.is_err() {
                return Err(SegmentError::Header(HeaderError::Impossible {
                    reason: "ring placement unusable",
                }));
            }
        }
        if let Some([a, b]) = &options.end_names {
            let header = segment.header()?;
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
    ) -> Result<Endpoint<C>, ChannelError> {
        let pid = current_pid();
        let ring = |direction: Direction| -> Result<&'static MessageRing<C>, ChannelError> {
            let placement = placements[direction.index()];
            // SAFETY: `validate` checked the placement lies inside the mapping (aligned, in
            // bounds); the mapping is valid for reads and writes and shared only with processes
            // using this crate's handles. The `'static` lifetime is confined to the private
            // handle fields of `Sender`/`Receiver`, which drop before the mapping's last `Arc`
            // (module docs).
            unsafe {
                MessageRing::<C>::attach(segment.as_ptr().add(placement.offset), placement.size)
            }
            .map_err(|error| ChannelError::Ring { direction, error })
        };
        let outgoing = ring(end.outgoing())?;
        let incoming = ring(end.incoming())?;
        let header: *const SegmentHeader = segment.header().map_err(SegmentError::from)?;
        // SAFETY: as for the rings: the header lies at the start of the mapping and the reference
        // is kept only in fields that drop before the mapping (or beside it, without drop glue).
        let header: &'static SegmentHeader = unsafe { &*header };
        let attachment = Arc::new(Attachment {
            header,
            segment,
            end,
            pid: pid.get(),
            marked: core::sync::atomic::AtomicBool::new(false),
        });
        let claimant = Claimant {
            header,
            end,
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
                producer,
                wait: header.wait_cell(end.outgoing()),
                space: Parker::new(header.space_cell(end.outgoing())),
                ring: outgoing,
                counters: header.send_counters(end.outgoing()),
                allocs: 0,
                full_seen: false,
                attachment: Arc::clone(&attachment),
            },
            receiver: Receiver {
                consumer,
                parker: Parker::new(header.wait_cell(end.incoming())),
                space: header.space_cell(end.incoming()),
                ring: incoming,
                counters: header.recv_counters(end.incoming()),
                attachment,
            },
        })
    }
}

/// What the claiming process knows while it attaches `end`, and the ticket that makes it the only
/// taker of a dead holder recorded in the end's liveness record.
///
/// Ring sides are claimed with bare pids, and a pid outlives its process: the next process given
/// it (in a container, the restarted main process, often pid 1 again) would otherwise see a side
/// of the end it held before it restarted as held by itself, and an unrelated process given the
/// pid would make the dead holder look alive. The liveness record keeps the holder's start time
/// too, which tells these apart. One case needs more than that check: a process whose pid is the
/// dead holder's "takes the side over" with a compare-and-swap that leaves the side word as it
/// was, so that compare-and-swap cannot stop a second taker. Every taker that relies on the
/// record therefore first swaps the recorded start time (this process's own start time when the
/// holder's pid is ours, so that the record names the process that will hold the end; 0 =
/// unknown otherwise, until its `mark_attached` writes its own): only one swap from a given
/// record succeeds, and whoever reads the record after it sees a live holder.
struct Claimant<'h> {
    header: &'h SegmentHeader,
    end: End,
    pid: NonZeroU32,
    /// This process's start time (0 if `/proc` cannot tell).
    start: u64,
    /// The dead holder this process won the record for: (its pid, the start time the record held,
    /// the start time we wrote). Put back on drop if the attach fails, so that a failed attempt
    /// leaves the record as it found it.
    ticket: core::cell::Cell<Option<(u32, u64, u64)>>,
}

/// What [`Claimant::verdict`] found about a side's holder.
enum Verdict {
    /// The holder's process is gone, and this process may take the side over.
    Dead,
    /// The holder runs (or cannot be told from a live process, or is this very process).
    Alive,
    /// The record changed while we judged: look again.
    Changed,
}

impl Claimant<'_> {
    /// Judges `holder`, the pid claiming a side of our end, and wins the ticket when the verdict
    /// rests on the liveness record (type docs).
    fn verdict(&self, holder: NonZeroU32) -> Verdict {
        if let Some((won, ..)) = self.ticket.get() {
            // We already changed the record on the evidence that `won` is dead: the same pid on
            // the other side is the same dead process. Another pid is not in the record, so only
            // its existence can tell (and our own pid there, nothing: refuse).
            return if won == holder.get() || (holder != self.pid && !is_process_alive(holder.get()))
            {
                Verdict::Dead
            } else {
                Verdict::Alive
            };
        }
        let (recorded_pid, recorded_start) = self.header.owner(self.end);
        let recorded = recorded_pid == holder.get() && recorded_start != 0;
        let replacement = if holder == self.pid {
            // Our own pid: this very process holds the end already, unless the record shows that
            // a previous process with our pid (long exited: we have its pid) does.
            if !recorded || self.start == 0 || recorded_start == self.start {
                return Verdict::Alive;
            }
            self.start
        } else {
            let alive = if recorded {
                is_process_alive_since(holder.get(), recorded_start)
            } else {
                is_process_alive(holder.get())
            };
            if alive {
                return Verdict::Alive;
            }
            if !recorded {
                // Judged by the pid alone: the side word's compare-and-swap away from `holder`
                // is the only exclusion needed.
                return Verdict::Dead;
            }
            0
        };
        if !self
            .header
            .swap_owner_start(self.end, recorded_start, replacement)
        {
            return Verdict::Changed;
        }
        if self.header.owner_pid(self.end) != holder.get() {
            // The start time matched by coincidence, under another owner who attached meanwhile
            // (two processes started in the same clock tick): put its record back.
            let _ = self
                .header
                .swap_owner_start(self.end, replacement, recorded_start);
            return Verdict::Changed;
        }
        self.ticket
            .set(Some((holder.get(), recorded_start, replacement)));
        Verdict::Dead
    }
}

impl Drop for Claimant<'_> {
    fn drop(&mut self) {
        if let Some((_, found, wrote)) = self.ticket.get() {
            let _ = self.header.swap_owner_start(self.end, wrote, found);
        }
    }
}

/// Claims a ring side of `claimant`'s end, taking it over from a dead holder. A few rounds,
/// because the holder may release or change between our attempts.
fn claim<T>(
    claimant: &Claimant<'_>,
    direction: Direction,
    claim: impl Fn() -> Result<T, ClaimError>,
    take_over: impl Fn(NonZeroU32) -> Result<T, ClaimError>,
) -> Result<T, ChannelError> {
    let corrupt = |reason| ChannelError::Ring {
        direction,
        error: AttachError::Corrupt { reason },
    };
    let mut holder = 0;
    for _ in 0..4 {
        let taken = match claim() {
            Ok(handle) => return Ok(handle),
            Err(ClaimError::Taken { owner }) => owner,
            Err(ClaimError::Corrupt { reason }) => return Err(corrupt(reason)),
            Err(_) => return Err(corrupt("unknown claim error")),
        };
        holder = taken;
        let Some(dead) = NonZeroU32::new(taken) else {
            continue; // released meanwhile
        };
        match claimant.verdict(dead) {
            Verdict::Dead => {}
            Verdict::Alive => break,
            Verdict::Changed => continue,
        }
        match take_over(dead) {
            Ok(handle) => return Ok(handle),
            Err(ClaimError::Taken { owner }) => holder = owner,
            Err(ClaimError::Corrupt { reason }) => return Err(corrupt(reason)),
            Err(_) => return Err(corrupt("unknown claim error")),
        }
    }
    Err(ChannelError::EndTaken {
        end: claimant.end,
        direction,
        holder_pid: holder,
    })
}

/// What an end's sender and receiver share: the mapping, and the end's liveness record.
#[derive(Debug)]
struct Attachment {
    /// Points into `segment`'s mapping; never used after it (a field of the same value, read
    /// only through `&self` and in `Drop::drop`, which runs before the fields drop).
    header: &'static SegmentHeader,
    segment: Segment,
    end: End,
    pid: u32,
    /// Whether this attachment recorded itself as the end's owner (and so must clear it).
    marked: core::sync::atomic::AtomicBool,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if *self.marked.get_mut() {
            self.header.mark_detached(self.end, self.pid);
        }
    }
}

/// One process's end of a channel: a [`Sender`] and a [`Receiver`], plus the segment's header.
#[derive(Debug)]
pub struct Endpoint<const C: usize> {
    sender: Sender<C>,
    receiver: Receiver<C>,
}

impl<const C: usize> Endpoint<C> {
    /// The sending half (on this end's outgoing ring).
    pub fn sender(&mut self) -> &mut Sender<C> {
        &mut self.sender
    }

    /// The receiving half (on this end's incoming ring).
    pub fn receiver(&mut self) -> &mut Receiver<C> {
        &mut self.receiver
    }

    /// Closes this end, then removes the segment's file if no other process has it open: the
    /// clean-close path that leaves no file behind once both ends are done. When the peer still
    /// has the segment open this returns [`Reclaim::InUse`] and leaves the file for the peer to
    /// remove when it closes the same way; when both close at once, exactly one of them removes
    /// it. Messages still queued in either ring are discarded with the file, so call it when the
    /// conversation is over (a plain drop keeps them for whoever opens the end next).
    ///
    /// ```
    /// use shm_channel::{Channel, ChannelOptions, End, Reclaim};
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let options = ChannelOptions::new().dir(dir.path());
    /// let a = Channel::<4096>::create_or_open("close-doc", End::A, &options).unwrap();
    /// let b = Channel::<4096>::create_or_open("close-doc", End::B, &options).unwrap();
    /// assert_eq!(a.close_and_remove_if_last().unwrap(), Reclaim::InUse);
    /// assert_eq!(b.close_and_remove_if_last().unwrap(), Reclaim::Removed);
    /// assert!(!dir.path().join("close-doc").exists());
    /// ```
    ///
    /// # Errors
    /// As [`Segment::close_and_remove_if_unused`]; the end is closed all the same.
    pub fn close_and_remove_if_last(self) -> Result<Reclaim, SegmentError> {
        let (dir, name) = self.segment().locate()?;
        drop(self);
        Segment::reclaim_at(&dir, &name)
    }

    /// Splits the endpoint, e.g. to send and receive on different threads. Each half keeps the
    /// segment mapped; the end is released when both are dropped.
    pub fn split(self) -> (Sender<C>, Receiver<C>) {
        (self.sender, self.receiver)
    }

    /// Which end this is.
    pub fn end(&self) -> End {
        self.sender.attachment.end
    }

    /// The segment's header: counters, liveness, session area.
    pub fn header(&self) -> &SegmentHeader {
        self.sender.header()
    }

    /// The segment.
    pub fn segment(&self) -> &Segment {
        &self.sender.attachment.segment
    }

    /// `true` if this process created the segment.
    pub fn created(&self) -> bool {
        self.segment().created()
    }

    /// The process id recorded as holding the other end (0 if none has attached, or it
    /// detached cleanly).
    pub fn peer_pid(&self) -> u32 {
        self.header().owner_pid(self.end().peer())
    }

    /// Whether the other end is held by a process that runs now: the recorded pid exists and,
    /// where the record has its start time, is still the process that attached (not a later one
    /// given the same pid). `false` before the peer first attaches and after it detaches or dies.
    pub fn peer_alive(&self) -> bool {
        let (pid, start) = self.header().owner(self.end().peer());
        is_process_alive_since(pid, start)
    }

    /// Records a heartbeat for this end; `now` is whatever clock the application uses (the
    /// library never reads one). For the peer's [`WaitOptions::heartbeat_limit`] to judge it,
    /// use [`monotonic_nanos`].
    pub fn heartbeat(&self, now: u64) {
        self.header().set_heartbeat(self.end(), now);
    }

    /// How long ago the peer recorded its last heartbeat, as of `now` on the clock the peer uses
    /// (0 if its heartbeat is ahead of `now`); `None` if it never recorded one.
    pub fn peer_heartbeat_age(&self, now: u64) -> Option<u64> {
        match self.header().heartbeat(self.end().peer()) {
            0 => None,
            beat => Some(now.saturating_sub(beat)),
        }
    }

    /// Counters of one direction.
    pub fn stats(&self, direction: Direction) -> DirectionStats {
        self.header().stats(direction)
    }

    /// Removes the segment's file; this endpoint (and the peer's) keep working until dropped.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`] if it was already removed, or a system error.
    pub fn unlink(&self) -> Result<(), SegmentError> {
        self.segment().unlink()
    }
}

/// The sending half of an [`Endpoint`]; implements [`MessageSender`] and counts what it sends in
/// the header.
pub struct Sender<const C: usize> {
    // Field order is load-bearing: `producer` and `counters` point into the mapping that
    // `attachment` keeps alive, so they must drop first (module docs).
    producer: MessageProducer<'static, C>,
    wait: &'static WaitCell,
    /// Where this sender parks while its ring is full; disarms its cell when dropped.
    space: Parker<'static>,
    ring: &'static MessageRing<C>,
    counters: &'static SendCounters,
    allocs: u32,
    /// The last `alloc` was `Full`; the next one records the depth the ring measured then.
    full_seen: bool,
    attachment: Arc<Attachment>,
}

impl<const C: usize> Sender<C> {
    /// The segment's header.
    pub fn header(&self) -> &SegmentHeader {
        self.attachment.header
    }

    /// The wrapping byte position the next message will be written at (see
    /// [`MessageProducer::position`]): recovered on take-over, so a layer above can tell whether
    /// a push it was doing when it crashed happened.
    pub fn position(&self) -> u32 {
        self.producer.position()
    }

    /// Reserves a `len`-byte message as [`alloc`](MessageSender::alloc) does, waiting while the
    /// ring is full, as `options` say: busy-polling, spinning then yielding, or sleeping on a
    /// futex in the segment until the receiver frees room. Returns at once when there is room.
    ///
    /// While waiting it checks the receiver every liveness interval: the process holding this
    /// direction's consumer side must exist (and be the one that attached), and its heartbeat
    /// must be younger than the options' limit if one is set. Once a sender has blocked, its
    /// receiver pays a memory fence per pop (not a syscall) until the sender is dropped or
    /// [disarmed](Self::disarm_blocking); a receiver that was never waited for pays one load.
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_channel::{Channel, ChannelOptions, End, WaitOptions, WaitStrategy};
    /// use spsc_core::{MessageReceiver, MessageSender, SendError, SendSlot};
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let options = ChannelOptions::new().dir(dir.path());
    /// let mut a = Channel::<4096>::create_or_open("room-doc", End::A, &options).unwrap();
    /// let mut b = Channel::<4096>::create_or_open("room-doc", End::B, &options).unwrap();
    /// let block = WaitOptions::new(WaitStrategy::Block { spin_first: 100 })
    ///     .timeout(Duration::from_millis(10));
    ///
    /// while a.sender().send(1, &[0; 1000]).is_ok() {}
    /// // Full, and nobody pops: the wait times out.
    /// assert_eq!(a.sender().alloc_wait(1000, 1, &block).unwrap_err(), SendError::Full);
    /// // Four records fill the ring; the next one wraps, so the 64 bytes left at the end go to
    /// // padding and one freed record is not room enough: free two.
    /// b.receiver().pop().unwrap();
    /// b.receiver().pop().unwrap();
    /// let mut slot = a.sender().alloc_wait(1000, 1, &block).unwrap();
    /// slot.payload_mut().fill(7);
    /// slot.push();
    /// ```
    ///
    /// # Errors
    /// [`SendError::TooLarge`] at once for a message that can never fit;
    /// [`SendError::Full`] when the timeout passed with the ring still full;
    /// [`SendError::Disconnected`] when the ring is full and its receiver is gone (its process
    /// died, it exceeded the heartbeat limit, or it detached after having attached; a receiver
    /// that never attached yet is waited for). The messages stay queued for a receiver that
    /// attaches later. [`SendError::Corrupt`] as `alloc`.
    pub fn alloc_wait(
        &mut self,
        len: u32,
        tag: u16,
        options: &WaitOptions,
    ) -> Result<ChannelSlot<'_, C>, SendError> {
        if len <= MessageRing::<C>::MAX_PAYLOAD && !self.producer.has_room(len)? {
            bump(&self.counters.full_rejections, 1);
            self.record_depth(self.producer.queued_bytes_cached());
            let Self {
                producer,
                space,
                ring,
                attachment,
                ..
            } = self;
            let ring = *ring;
            let outcome = wait_watching_peer(
                space,
                options,
                attachment,
                || ring.holders().1,
                // An error is "ready" too: `alloc` reports it.
                || producer.has_room(len) != Ok(false),
            );
            match outcome {
                WaitOutcome::Ready => {}
                WaitOutcome::TimedOut => return Err(SendError::Full),
                WaitOutcome::PeerGone => return Err(SendError::Disconnected),
            }
        }
        // Room only grows while we hold the producer side, so this does not report `Full`.
        self.alloc(len, tag)
    }

    /// Copies `payload` into a message tagged `tag` and publishes it, waiting for room as
    /// [`alloc_wait`](Self::alloc_wait) does.
    ///
    /// # Errors
    /// As [`alloc_wait`](Self::alloc_wait); a payload longer than `u32::MAX` bytes is
    /// [`SendError::TooLarge`].
    pub fn send_wait(
        &mut self,
        tag: u16,
        payload: &[u8],
        options: &WaitOptions,
    ) -> Result<(), SendError> {
        let len = u32::try_from(payload.len()).map_err(|_| SendError::TooLarge {
            len: payload.len() as u64,
            max: MessageRing::<C>::MAX_PAYLOAD,
        })?;
        let mut slot = self.alloc_wait(len, tag, options)?;
        slot.payload_mut().copy_from_slice(payload);
        slot.push();
        Ok(())
    }

    /// Tells the receiver this sender will not block any more, so it stops fencing after each
    /// pop. Dropping the sender does the same; the next blocking wait re-arms.
    pub fn disarm_blocking(&mut self) {
        self.space.disarm();
    }

    /// Records the queue depth in the high-water mark, reading the consumer's index (one load of
    /// its line: done every 64 allocations only).
    #[cold]
    fn sample_depth(&mut self) {
        let depth = self.producer.queued_bytes();
        self.record_depth(depth);
    }

    /// Raises the high-water mark to `depth` bytes if it is higher.
    fn record_depth(&self, depth: u32) {
        let depth = u64::from(depth);
        let mark = &self.counters.high_water_bytes;
        if depth > mark.load(core::sync::atomic::Ordering::Relaxed) {
            mark.store(depth, core::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl<const C: usize> fmt::Debug for Sender<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("end", &self.attachment.end)
            .field("producer", &self.producer)
            .finish_non_exhaustive()
    }
}

impl<const C: usize> MessageSender for Sender<C> {
    type Slot<'s>
        = ChannelSlot<'s, C>
    where
        Self: 's;

    /// As [`MessageProducer::alloc`]; also samples the queue depth every 64 allocations, and on
    /// `Full` records the depth the ring has just measured (no extra load: a sender retrying on
    /// `Full` must not keep pulling the receiver's index line away from it).
    #[inline]
    fn alloc(&mut self, len: u32, tag: u16) -> Result<ChannelSlot<'_, C>, SendError> {
        self.allocs = self.allocs.wrapping_add(1);
        if self.full_seen {
            // The last `alloc` was `Full`, so the ring had just reloaded the consumer's index:
            // the cached depth is current, and reading it costs no load.
            self.full_seen = false;
            self.record_depth(self.producer.queued_bytes_cached());
        } else if self.allocs.is_multiple_of(64) {
            self.sample_depth();
        }
        let counters = self.counters;
        let wait = self.wait;
        match self.producer.alloc(len, tag) {
            Ok(inner) => Ok(ChannelSlot {
                inner,
                wait,
                counters,
                len,
            }),
            Err(error) => {
                if error == SendError::Full {
                    bump(&counters.full_rejections, 1);
                    self.full_seen = true;
                }
                Err(error)
            }
        }
    }

    fn max_payload(&self) -> u32 {
        MessageRing::<C>::MAX_PAYLOAD
    }
}

/// A message being written by a [`Sender`]; see [`SendSlot`].
pub struct ChannelSlot<'s, const C: usize> {
    inner: MessageSlot<'s, 'static, C>,
    wait: &'s WaitCell,
    counters: &'s SendCounters,
    len: u32,
}

impl<const C: usize> SendSlot for ChannelSlot<'_, C> {
    #[inline(always)]
    fn payload_mut(&mut self) -> &mut [u8] {
        self.inner.payload_mut()
    }

    fn tag(&self) -> u16 {
        self.inner.tag()
    }

    /// Publishes the message, wakes the receiver if it sleeps, then counts the message (two
    /// relaxed stores on the sender's own line). Waking costs one load of a line that stays
    /// shared while the receiver has never blocked; a fence while it may block; a syscall only
    /// if it is asleep or about to sleep ([`crate::wait`]).
    #[inline]
    fn push(self) {
        self.inner.push();
        self.wait.notify();
        bump(&self.counters.messages, 1);
        bump(&self.counters.bytes, u64::from(self.len));
    }
}

impl<const C: usize> fmt::Debug for ChannelSlot<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSlot")
            .field("inner", &self.inner)
            .finish()
    }
}

/// The receiving half of an [`Endpoint`]; implements [`MessageReceiver`] and counts what it pops
/// in the header.
pub struct Receiver<const C: usize> {
    // Field order is load-bearing, as in `Sender`; `parker` disarms its cell when dropped.
    consumer: MessageConsumer<'static, C>,
    parker: Parker<'static>,
    /// The cell a sender blocked on a full ring parks on: notified whenever we free room.
    space: &'static WaitCell,
    ring: &'static MessageRing<C>,
    counters: &'static RecvCounters,
    attachment: Arc<Attachment>,
}

impl<const C: usize> Receiver<C> {
    /// The segment's header.
    pub fn header(&self) -> &SegmentHeader {
        self.attachment.header
    }

    /// The wrapping byte position of the next message to read (see
    /// [`MessageConsumer::position`]); every pop moves it, so it is the durable record of what
    /// was delivered.
    pub fn position(&self) -> u32 {
        self.consumer.position()
    }

    /// `true` if there is no message to read now.
    pub fn is_empty(&mut self) -> bool {
        self.consumer.is_empty()
    }

    /// Waits until [`front`](MessageReceiver::front) has something to report (a message, or
    /// [`RecvError::Corrupt`]), as `options` say. Reads the monotonic clock while waiting (this
    /// is not the hot path); returns at once, without reading it, if a message is there.
    ///
    /// Every liveness interval it checks the sender of this direction: the process holding the
    /// ring's producer side must exist, and its heartbeat must be younger than the options'
    /// limit if one is set. Messages already in the ring are reported first, even after the
    /// sender died: pop is the commit.
    ///
    /// # Errors
    /// [`RecvError::TimedOut`] when the timeout passed; [`RecvError::Disconnected`] when the ring is
    /// empty and the sender is gone: its process died, it exceeded the heartbeat limit, or it
    /// detached after having attached (a sender that never attached yet is waited for).
    pub fn wait_readable(&mut self, options: &WaitOptions) -> Result<(), RecvError> {
        let Self {
            consumer,
            parker,
            ring,
            attachment,
            ..
        } = self;
        let ring = *ring;
        let outcome = wait_watching_peer(
            parker,
            options,
            attachment,
            || ring.holders().0,
            || !consumer.is_empty(),
        );
        match outcome {
            WaitOutcome::Ready => Ok(()),
            WaitOutcome::TimedOut => Err(RecvError::TimedOut),
            WaitOutcome::PeerGone => Err(RecvError::Disconnected),
        }
    }

    /// Waits for the next message as [`wait_readable`](Self::wait_readable) does, then borrows
    /// it in place; [`pop`](MessageReceiver::pop) it when done.
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_channel::{Channel, ChannelOptions, End, WaitOptions, WaitStrategy};
    /// use spsc_core::{MessageReceiver, MessageSender, RecvError};
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let options = ChannelOptions::new().dir(dir.path());
    /// let mut a = Channel::<4096>::create_or_open("wait-doc", End::A, &options).unwrap();
    /// let mut b = Channel::<4096>::create_or_open("wait-doc", End::B, &options).unwrap();
    /// let block = WaitOptions::new(WaitStrategy::Block { spin_first: 100 })
    ///     .timeout(Duration::from_millis(10));
    ///
    /// a.sender().send(3, b"wake up").unwrap();
    /// let message = b.receiver().recv_wait(&block).unwrap();
    /// assert_eq!(message.payload(), b"wake up");
    /// b.receiver().pop().unwrap();
    /// // Nothing more: the timeout reports an empty ring.
    /// assert_eq!(b.receiver().recv_wait(&block).unwrap_err(), RecvError::TimedOut);
    /// ```
    ///
    /// # Errors
    /// As [`wait_readable`](Self::wait_readable), and [`RecvError::Corrupt`] as
    /// [`front`](MessageReceiver::front).
    pub fn recv_wait(&mut self, options: &WaitOptions) -> Result<Message<'_>, RecvError> {
        self.wait_readable(options)?;
        self.consumer.front()
    }

    /// Tells the sender this receiver will not block any more, so it stops fencing after each
    /// push. Dropping the receiver does the same; the next blocking wait re-arms.
    pub fn disarm_blocking(&mut self) {
        self.parker.disarm();
    }

    /// Whether the sender of this direction is gone (see [`wait_readable`](Self::wait_readable));
    /// `now` and `heartbeat_limit` in nanoseconds of [`monotonic_nanos`].
    pub fn sender_gone(&self, now: u64, heartbeat_limit: Option<u64>) -> bool {
        let attachment = &self.attachment;
        let producer = self.ring.holders().0;
        holder_gone(
            attachment.header,
            producer,
            attachment.end.peer(),
            heartbeat_limit,
            now,
        )
    }
}

/// Waits on `parker` until `ready()`, as `options` say, checking every liveness interval whether
/// the process holding the peer's side of our ring (`holder()`, a pid) is gone. A peer found gone
/// is reported only if `ready()` is still false: its last work may have landed after our last
/// poll.
fn wait_watching_peer(
    parker: &mut Parker<'_>,
    options: &WaitOptions,
    attachment: &Attachment,
    holder: impl Fn() -> u32,
    mut ready: impl FnMut() -> bool,
) -> WaitOutcome {
    let header = attachment.header;
    let peer = attachment.end.peer();
    let heartbeat_limit = options.heartbeat_limit_ns();
    let outcome = parker.wait(
        options,
        &mut ready,
        |now| holder_gone(header, holder(), peer, heartbeat_limit, now),
        monotonic_nanos,
    );
    match outcome {
        WaitOutcome::PeerGone if ready() => WaitOutcome::Ready,
        outcome => outcome,
    }
}

/// Whether the side of a ring held by `holder` (a pid, 0 when free) on behalf of end `peer` is
/// gone as of `now` (nanoseconds of [`monotonic_nanos`]): its process no longer exists (or the
/// pid now names a later process), its heartbeat is older than `heartbeat_limit`, or it released
/// the ring after having attached.
fn holder_gone(
    header: &SegmentHeader,
    holder: u32,
    peer: End,
    heartbeat_limit: Option<u64>,
    now: u64,
) -> bool {
    if holder == 0 {
        // Never attached yet: wait for it. Attached once and released since: gone.
        return header.attach_count(peer) > 0;
    }
    // The peer's record tells a restarted or unrelated process that was given the holder's pid
    // from the holder itself, when it names the holder.
    let (recorded_pid, recorded_start) = header.owner(peer);
    let start = if recorded_pid == holder {
        recorded_start
    } else {
        0
    };
    if !is_process_alive_since(holder, start) {
        return true;
    }
    match (heartbeat_limit, header.heartbeat(peer)) {
        (Some(limit), beat) if beat != 0 => now.saturating_sub(beat) > limit,
        _ => false,
    }
}

impl<const C: usize> fmt::Debug for Receiver<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("end", &self.attachment.end)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl<const C: usize> MessageReceiver for Receiver<C> {
    #[inline]
    fn front(&mut self) -> Result<Message<'_>, RecvError> {
        self.consumer.front()
    }

    /// Pops, wakes a sender blocked on a full ring (one load of a line nobody writes, unless a
    /// sender has blocked), then counts the message (two relaxed stores on the receiver's own
    /// line).
    #[inline]
    fn pop(&mut self) -> Result<(), RecvError> {
        let len = self.consumer.front()?.len() as u64;
        self.consumer.pop()?;
        // Only pops wake a waiting sender, never the padding records `front` skips: once our
        // index reaches a padding record, any message fits after it, so no sender waits for a
        // skip. (A padding record is shorter than the record it made way for, so at most
        // `C/2 - 8` bytes; a record is at most `C/2`; with the 8 bytes reserved past it, the
        // padding and any record fit in `C`.)
        self.space.notify();
        bump(&self.counters.messages, 1);
        bump(&self.counters.bytes, len);
        Ok(())
    }
}
