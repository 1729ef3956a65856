//! The receiving half of an end: the message API on its incoming ring, with waiting for
//! messages and telling when the sender is gone.

use core::fmt;
use core::mem::ManuallyDrop;
use std::sync::Arc;

use spsc_core::{Message, MessageConsumer, MessageReceiver, MessageRing, RecvError};

use crate::endpoint::Attachment;
use crate::header::{bump, End, RecvCounters, SegmentHeader};
use crate::pid::is_process_alive_since;
use crate::wait::{monotonic_nanos, Parker, WaitCell, WaitOptions, WaitOutcome};

/// The receiving half of an [`Endpoint`](crate::Endpoint); implements [`MessageReceiver`] and counts what it pops
/// in the header.
pub struct Receiver<const C: usize, const L: usize = 1> {
    // Field order is load-bearing, as in `Sender`; `parker` disarms its cell when dropped. Both
    // are dropped by hand, as in `Sender`, so that a forked child's copy leaves them alone.
    pub(crate) consumer: ManuallyDrop<MessageConsumer<'static, C, L>>,
    pub(crate) parker: ManuallyDrop<Parker<'static>>,
    /// The cell a sender blocked on a full ring parks on: notified whenever we free room.
    pub(crate) space: &'static WaitCell,
    pub(crate) ring: &'static MessageRing<C, L>,
    pub(crate) counters: &'static RecvCounters,
    pub(crate) attachment: Arc<Attachment>,
}

impl<const C: usize, const L: usize> Receiver<C, L> {
    /// The segment's header.
    pub fn header(&self) -> &SegmentHeader {
        self.attachment.header
    }

    /// The process ids holding the producer and consumer sides of this end's incoming ring, as the
    /// ring records them (0 when free): for monitoring, and to tell which process a
    /// [`ChannelError::EndTaken`](crate::ChannelError::EndTaken) refers to. One load each.
    pub fn ring_holders(&self) -> (u32, u32) {
        self.ring.holders()
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
pub(crate) fn wait_watching_peer(
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
pub(crate) fn holder_gone(
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

impl<const C: usize, const L: usize> Drop for Receiver<C, L> {
    /// Releases the consumer side and disarms the receiver's wait cell in the process that
    /// claimed them; a forked child's copy leaves both alone (see `Sender`'s `Drop`).
    fn drop(&mut self) {
        if self.attachment.held_here() {
            // SAFETY: each field is dropped exactly once, here, and never used afterwards.
            unsafe {
                ManuallyDrop::drop(&mut self.consumer);
                ManuallyDrop::drop(&mut self.parker);
            }
        }
    }
}

impl<const C: usize, const L: usize> fmt::Debug for Receiver<C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("end", &self.attachment.end)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl<const C: usize, const L: usize> MessageReceiver for Receiver<C, L> {
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
