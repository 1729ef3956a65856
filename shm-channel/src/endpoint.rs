//! One process's end of a channel: its sender, its receiver, and what they share.

use core::mem::ManuallyDrop;

use crate::header::{Direction, DirectionStats, End, SegmentHeader};
use crate::pid::{current_pid, is_process_alive_since};
use crate::receiver::Receiver;
use crate::segment::{Reclaim, Segment, SegmentError};
use crate::sender::Sender;

/// What an end's sender and receiver share: the mapping, and the end's liveness record.
#[derive(Debug)]
pub(crate) struct Attachment {
    /// Points into `segment`'s mapping; never used after it (a field of the same value, read
    /// only through `&self` and in `Drop::drop`, which runs before the fields drop).
    pub(crate) header: &'static SegmentHeader,
    /// Dropped by hand in `Drop`, so that the file can be removed once the mapping and its lock
    /// are gone ([`ChannelOptions::remove_on_close`](crate::ChannelOptions::remove_on_close)).
    pub(crate) segment: ManuallyDrop<Segment>,
    pub(crate) end: End,
    pub(crate) pid: u32,
    /// Whether this attachment recorded itself as the end's owner (and so must clear it).
    pub(crate) marked: core::sync::atomic::AtomicBool,
    /// Remove the segment's file when this end closes last (however it closes, unwinding
    /// included).
    pub(crate) remove_on_close: bool,
}

impl Attachment {
    /// Whether this process is the one that attached: `false` in a child made by `fork`, which
    /// holds copies of its parent's handles but not the end (one `getpid`; never on the hot
    /// path).
    pub(crate) fn held_here(&self) -> bool {
        current_pid().get() == self.pid
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        // A forked child's copy must not clear the live parent's owner record, nor remove the
        // file the parent uses.
        let here = self.held_here();
        let attached = *self.marked.get_mut();
        if attached && here {
            self.header.mark_detached(self.end, self.pid);
        }
        // Only an end that did attach removes anything: a failed open (a corrupt ring, say)
        // leaves the file as it found it.
        let removal = (self.remove_on_close && attached && here)
            .then(|| self.segment.locate().ok())
            .flatten();
        // SAFETY: dropped exactly once, here; `header` (which points into the mapping) is not
        // used after this line, and nothing else refers to the mapping any more: the ring
        // handles that borrowed it were dropped before the last `Arc` to this value.
        unsafe { ManuallyDrop::drop(&mut self.segment) };
        if let Some((dir, place)) = removal {
            // Removed only if no other process has it open (its lock tells), and only if it is
            // still this segment; an error leaves the file for `reclaim_stale`.
            let _ = Segment::reclaim_at(&dir, &place);
        }
    }
}

/// One process's end of a channel: a [`Sender`] and a [`Receiver`], plus the segment's header.
#[derive(Debug)]
pub struct Endpoint<const C: usize, const L: usize = 1> {
    pub(crate) sender: Sender<C, L>,
    pub(crate) receiver: Receiver<C, L>,
}

impl<const C: usize, const L: usize> Endpoint<C, L> {
    /// The sending half (on this end's outgoing ring).
    pub fn sender(&mut self) -> &mut Sender<C, L> {
        &mut self.sender
    }

    /// The receiving half (on this end's incoming ring).
    pub fn receiver(&mut self) -> &mut Receiver<C, L> {
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
    /// A process spawned by either user at that instant shares the file's lock until it calls
    /// `exec`, and can make both closers see [`Reclaim::InUse`]
    /// ([`Segment::close_and_remove_if_unused`] says more).
    ///
    /// # Errors
    /// As [`Segment::close_and_remove_if_unused`]; the end is closed all the same.
    pub fn close_and_remove_if_last(self) -> Result<Reclaim, SegmentError> {
        let (dir, name) = self.segment().locate()?;
        drop(self);
        Segment::reclaim_at(&dir, &name)
    }

    /// Both halves at once, borrowed: read a message in place while writing its reply in place
    /// (a server's handler), with no split and no copy.
    pub fn halves(&mut self) -> (&mut Sender<C, L>, &mut Receiver<C, L>) {
        (&mut self.sender, &mut self.receiver)
    }

    /// Splits the endpoint, e.g. to send and receive on different threads. Each half keeps the
    /// segment mapped; the end is released when both are dropped.
    pub fn split(self) -> (Sender<C, L>, Receiver<C, L>) {
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
    /// library never reads one). For the peer's [`WaitOptions::heartbeat_limit`](crate::WaitOptions::heartbeat_limit) to judge it,
    /// use [`monotonic_nanos`](crate::monotonic_nanos).
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
