//! The message API every transport of this workspace implements: the in-process
//! [`MessageRing`](crate::MessageRing), the shared-memory channel and the TCP transport.
//!
//! Sending is *alloc, write in place, push*; receiving is *front, read in place, pop*. Pop is the
//! commit: a message counts as delivered only once the receiver pops it.

use core::fmt;

/// The sending half of a message transport.
///
/// ```
/// use spsc_core::{MessageRing, MessageSender, MessageReceiver, SendSlot};
///
/// let mut ring = MessageRing::<1024>::new();
/// let (mut tx, mut rx) = ring.split();
/// let mut slot = tx.alloc(5, 7).unwrap();
/// slot.payload_mut().copy_from_slice(b"hello");
/// slot.push();
/// let msg = rx.front().unwrap();
/// assert_eq!((msg.tag(), msg.payload()), (7, &b"hello"[..]));
/// rx.pop().unwrap();
/// ```
pub trait MessageSender {
    /// A message being written; publish it with [`SendSlot::push`], or drop it to publish nothing.
    type Slot<'s>: SendSlot
    where
        Self: 's;

    /// Reserves room for a message of `len` payload bytes with type tag `tag`, contiguous and
    /// 8-byte aligned. The payload's previous contents are unspecified: write all of it.
    ///
    /// # Errors
    /// [`SendError::Full`] when there is no room now (retry after the receiver pops),
    /// [`SendError::TooLarge`] when `len` exceeds [`max_payload`](Self::max_payload) and can never
    /// fit, and transport-specific errors such as [`SendError::Disconnected`].
    fn alloc(&mut self, len: u32, tag: u16) -> Result<Self::Slot<'_>, SendError>;

    /// The largest payload [`alloc`](Self::alloc) accepts.
    fn max_payload(&self) -> u32;

    /// Copies `payload` into a new message and publishes it: `alloc` + copy + `push`.
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc); a payload longer than `u32::MAX` is [`SendError::TooLarge`].
    fn send(&mut self, tag: u16, payload: &[u8]) -> Result<(), SendError> {
        let len = u32::try_from(payload.len()).map_err(|_| SendError::TooLarge {
            len: payload.len() as u64,
            max: self.max_payload(),
        })?;
        let mut slot = self.alloc(len, tag)?;
        slot.payload_mut().copy_from_slice(payload);
        slot.push();
        Ok(())
    }
}

/// A reserved, unpublished message returned by [`MessageSender::alloc`].
pub trait SendSlot {
    /// The payload bytes to fill, exactly the length asked for, 8-byte aligned.
    fn payload_mut(&mut self) -> &mut [u8];

    /// The message's type tag.
    fn tag(&self) -> u16;

    /// Publishes the message to the receiver.
    fn push(self);
}

/// A `&mut` borrow of a sender is a sender, so generic code (and the conformance suite) can work
/// on a transport's sender without taking it apart.
impl<T: MessageSender + ?Sized> MessageSender for &mut T {
    type Slot<'s>
        = T::Slot<'s>
    where
        Self: 's;

    #[inline(always)]
    fn alloc(&mut self, len: u32, tag: u16) -> Result<Self::Slot<'_>, SendError> {
        (**self).alloc(len, tag)
    }

    #[inline(always)]
    fn max_payload(&self) -> u32 {
        (**self).max_payload()
    }
}

/// The receiving half of a message transport.
pub trait MessageReceiver {
    /// Borrows the oldest message in place. Repeated calls return the same message until
    /// [`pop`](Self::pop).
    ///
    /// # Errors
    /// [`RecvError::Empty`] when there is nothing to read now; [`RecvError::Corrupt`] if the
    /// sender (another process) wrote an impossible record; transport errors such as
    /// [`RecvError::Disconnected`].
    fn front(&mut self) -> Result<Message<'_>, RecvError>;

    /// Releases the oldest message, committing its delivery; its room becomes free to the sender.
    ///
    /// # Errors
    /// As [`front`](Self::front): popping with nothing to pop is [`RecvError::Empty`].
    fn pop(&mut self) -> Result<(), RecvError>;

    /// Runs `read` on the oldest message, then pops it: `front` + `read` + `pop`.
    ///
    /// # Errors
    /// As [`front`](Self::front); `read` is not called then.
    fn recv_with<R>(&mut self, read: impl FnOnce(Message<'_>) -> R) -> Result<R, RecvError> {
        let result = read(self.front()?);
        self.pop()?;
        Ok(result)
    }
}

/// A `&mut` borrow of a receiver is a receiver.
impl<T: MessageReceiver + ?Sized> MessageReceiver for &mut T {
    #[inline(always)]
    fn front(&mut self) -> Result<Message<'_>, RecvError> {
        (**self).front()
    }

    #[inline(always)]
    fn pop(&mut self) -> Result<(), RecvError> {
        (**self).pop()
    }
}

/// A received message, borrowed in place from the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    tag: u16,
    payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// Wraps a tag and payload; for transport implementations.
    pub const fn new(tag: u16, payload: &'a [u8]) -> Self {
        Self { tag, payload }
    }

    /// The type tag given at [`MessageSender::alloc`].
    pub const fn tag(&self) -> u16 {
        self.tag
    }

    /// The payload, 8-byte aligned, so a `#[repr(C)]` struct can be read from it in place.
    pub const fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Payload length in bytes.
    pub const fn len(&self) -> usize {
        self.payload.len()
    }

    /// `true` for a zero-length message.
    pub const fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }
}

/// Why a message could not be sent.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No room now; retry once the receiver has popped.
    Full,
    /// The message can never fit: `len` exceeds the transport's `max` payload.
    TooLarge {
        /// The payload length asked for.
        len: u64,
        /// The largest payload the transport accepts.
        max: u32,
    },
    /// The receiving side is gone (transports that can tell).
    Disconnected,
    /// The receiver (another process) published an impossible index; the channel cannot be used.
    Corrupt {
        /// Which check failed.
        reason: &'static str,
    },
}

impl core::error::Error for SendError {}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => f.write_str("queue is full; retry after the receiver pops"),
            Self::TooLarge { len, max } => write!(
                f,
                "message of {len} bytes exceeds the largest payload of {max} bytes"
            ),
            Self::Disconnected => f.write_str("the receiver is disconnected"),
            Self::Corrupt { reason } => write!(f, "queue is corrupt: {reason}"),
        }
    }
}

/// Why no message could be received.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvError {
    /// Nothing to read now.
    Empty,
    /// The sender (another process) wrote an impossible record; the channel cannot be used.
    Corrupt {
        /// Which check failed.
        reason: &'static str,
    },
    /// The sending side is gone and everything it sent has been popped (transports that can tell).
    Disconnected,
    /// A waiting receive gave up after its timeout with nothing to read (transports that wait).
    TimedOut,
}

impl core::error::Error for RecvError {}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("no message to read"),
            Self::Corrupt { reason } => write!(f, "queue is corrupt: {reason}"),
            Self::Disconnected => f.write_str("the sender is disconnected"),
            Self::TimedOut => f.write_str("no message arrived before the timeout"),
        }
    }
}
