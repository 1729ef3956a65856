//! The sending half of an end: the message API on its outgoing ring, with waiting for room.

use core::fmt;
use core::mem::ManuallyDrop;
use std::sync::Arc;

use spsc_core::{MessageProducer, MessageRing, MessageSender, MessageSlot, SendError, SendSlot};

use crate::endpoint::Attachment;
use crate::header::{bump, SegmentHeader, SendCounters};
use crate::receiver::wait_watching_peer;
use crate::wait::{Parker, WaitCell, WaitOptions, WaitOutcome};

/// The sending half of an [`Endpoint`](crate::Endpoint); implements [`MessageSender`] and counts what it sends in
/// the header.
pub struct Sender<const C: usize, const L: usize = 1> {
    // Field order is load-bearing: `producer` and `counters` point into the mapping that
    // `attachment` keeps alive, so they must drop first (module docs).
    /// Dropped by hand (see `Drop`): a forked child's copy must not release the parent's claim.
    pub(crate) producer: ManuallyDrop<MessageProducer<'static, C, L>>,
    pub(crate) wait: &'static WaitCell,
    /// Where this sender parks while its ring is full; disarms its cell when dropped (by hand,
    /// as `producer`).
    pub(crate) space: ManuallyDrop<Parker<'static>>,
    pub(crate) ring: &'static MessageRing<C, L>,
    pub(crate) counters: &'static SendCounters,
    pub(crate) allocs: u32,
    /// The last `alloc` was `Full`; the next one records the depth the ring measured then.
    pub(crate) full_seen: bool,
    pub(crate) attachment: Arc<Attachment>,
}

impl<const C: usize, const L: usize> Sender<C, L> {
    /// The segment's header.
    pub fn header(&self) -> &SegmentHeader {
        self.attachment.header
    }

    /// The process ids holding the producer and consumer sides of this end's outgoing ring, as the
    /// ring records them (0 when free): for monitoring, and to tell which process a
    /// [`ChannelError::EndTaken`](crate::ChannelError::EndTaken) refers to. One load each.
    pub fn ring_holders(&self) -> (u32, u32) {
        self.ring.holders()
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
    ) -> Result<ChannelSlot<'_, C, L>, SendError> {
        if len <= MessageRing::<C, L>::MAX_PAYLOAD && !self.producer.has_room(len)? {
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
            max: MessageRing::<C, L>::MAX_PAYLOAD,
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

impl<const C: usize, const L: usize> Drop for Sender<C, L> {
    /// Releases the producer side and disarms the sender's wait cell, in the process that
    /// claimed them. A copy in a child made by `fork` (which inherits the parent's memory, and
    /// so its handles) leaves both alone: releasing would let a third process claim a side the
    /// live parent still writes, and disarming would leave the parent's wait unwoken.
    fn drop(&mut self) {
        if self.attachment.held_here() {
            // SAFETY: each field is dropped exactly once, here, and never used afterwards (the
            // value is being dropped).
            unsafe {
                ManuallyDrop::drop(&mut self.producer);
                ManuallyDrop::drop(&mut self.space);
            }
        }
        // Otherwise the copies are forgotten: they own no memory, only references into the
        // mapping, which `attachment` unmaps after this.
    }
}

impl<const C: usize, const L: usize> fmt::Debug for Sender<C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("end", &self.attachment.end)
            .field("producer", &self.producer)
            .finish_non_exhaustive()
    }
}

impl<const C: usize, const L: usize> MessageSender for Sender<C, L> {
    type Slot<'s>
        = ChannelSlot<'s, C, L>
    where
        Self: 's;

    /// As [`MessageProducer::alloc`]; also samples the queue depth every 64 allocations, and on
    /// `Full` records the depth the ring has just measured (no extra load: a sender retrying on
    /// `Full` must not keep pulling the receiver's index line away from it).
    #[inline]
    fn alloc(&mut self, len: u32, tag: u16) -> Result<ChannelSlot<'_, C, L>, SendError> {
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
        MessageRing::<C, L>::MAX_PAYLOAD
    }
}

/// A message being written by a [`Sender`]; see [`SendSlot`].
pub struct ChannelSlot<'s, const C: usize, const L: usize = 1> {
    pub(crate) inner: MessageSlot<'s, 'static, C, L>,
    pub(crate) wait: &'s WaitCell,
    pub(crate) counters: &'s SendCounters,
    pub(crate) len: u32,
}

impl<const C: usize, const L: usize> SendSlot for ChannelSlot<'_, C, L> {
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

impl<const C: usize, const L: usize> fmt::Debug for ChannelSlot<'_, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSlot")
            .field("inner", &self.inner)
            .finish()
    }
}
