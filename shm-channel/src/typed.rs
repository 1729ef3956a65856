//! Typed messages: `#[repr(C)]` plain-old-data structs ([`bytemuck::Pod`]) sent and received in
//! place, over any transport of the message API.
//!
//! Payloads are 8-byte aligned by the API's contract, so a struct with alignment up to 8 is read
//! straight from the receive buffer: no copy. Structs with a larger alignment are refused at
//! compile time.
//!
//! ```
//! use bytemuck::{Pod, Zeroable};
//! use shm_channel::{PodReceiver, PodSender};
//! use spsc_core::{MessageReceiver, MessageRing};
//!
//! #[repr(C)]
//! #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
//! struct Quote {
//!     price: u64,
//!     qty: u32,
//!     side: u32,
//! }
//!
//! let mut ring = MessageRing::<1024>::new();
//! let (mut tx, mut rx) = ring.split();
//! tx.send_pod(1, &Quote { price: 101, qty: 5, side: 0 }).unwrap();
//! let (tag, quote) = rx.front_pod::<Quote>().unwrap(); // borrowed in place
//! assert_eq!((tag, quote.price), (1, 101));
//! rx.pop().unwrap();
//! ```

use core::fmt;
use core::marker::PhantomData;
use core::mem::{align_of, size_of};

use bytemuck::Pod;
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendError, SendSlot};

/// Rejects, at compile time, types whose alignment an 8-aligned payload cannot guarantee.
struct AlignCheck<T>(PhantomData<T>);

impl<T> AlignCheck<T> {
    const OK: () = assert!(
        align_of::<T>() <= 8,
        "message structs must have an alignment of at most 8 bytes"
    );
}

/// Sending `Pod` values; implemented for every [`MessageSender`].
///
/// A message struct is `#[repr(C)]`, made of integers, floats and arrays of them, with no hidden
/// padding (`derive(Pod)` refuses padding, since its bytes are uninitialised: order the fields
/// largest first and add an explicit `_pad: [u8; N]`), and aligned to at most 8 bytes. The
/// [tutorial](crate::tutorial#3-typed-messages-laying-out-a-message-struct) explains each rule.
///
/// ```
/// use shm_channel::prelude::*;
///
/// #[repr(C)]
/// #[derive(Clone, Copy, Pod, Zeroable)]
/// #[bytemuck(crate = "shm_channel::bytemuck")]
/// struct Heartbeat {
///     sent_at: u64,
///     sequence: u32,
///     flags: u16,
///     _pad: [u8; 2], // 8 + 4 + 2 + 2 = 16: no hidden padding
/// }
///
/// let mut ring = spsc_core::MessageRing::<1024>::new();
/// let (mut tx, mut rx) = ring.split();
/// let mut slot = tx.alloc_pod::<Heartbeat>(3).unwrap(); // written in place
/// *slot.value_mut() = Heartbeat { sent_at: 1, sequence: 2, flags: 0, _pad: [0; 2] };
/// slot.push();
/// let (tag, beat) = rx.front_pod::<Heartbeat>().unwrap(); // read in place
/// assert_eq!((tag, beat.sequence), (3, 2));
/// ```
pub trait PodSender: MessageSender {
    /// Copies `value` into a new message with tag `tag` and publishes it.
    ///
    /// # Errors
    /// As [`MessageSender::alloc`].
    fn send_pod<T: Pod>(&mut self, tag: u16, value: &T) -> Result<(), SendError> {
        let () = AlignCheck::<T>::OK;
        self.send(tag, bytemuck::bytes_of(value))
    }

    /// Reserves a message sized for a `T`, to be written in place through
    /// [`PodSlot::value_mut`] and published with [`PodSlot::push`].
    ///
    /// # Errors
    /// As [`MessageSender::alloc`]; [`SendError::Corrupt`] if the transport breaks its promise of
    /// an 8-aligned payload.
    fn alloc_pod<T: Pod>(&mut self, tag: u16) -> Result<PodSlot<Self::Slot<'_>, T>, SendError> {
        let () = AlignCheck::<T>::OK;
        let len = u32::try_from(size_of::<T>()).map_err(|_| SendError::TooLarge {
            len: size_of::<T>() as u64,
            max: self.max_payload(),
        })?;
        let mut slot = self.alloc(len, tag)?;
        if bytemuck::try_from_bytes_mut::<T>(slot.payload_mut()).is_err() {
            return Err(SendError::Corrupt {
                reason: "transport returned a misaligned payload",
            });
        }
        Ok(PodSlot {
            slot,
            _value: PhantomData,
        })
    }
}

impl<S: MessageSender + ?Sized> PodSender for S {}

/// A reserved message holding a `T`, written in place. Dropping it publishes nothing.
pub struct PodSlot<S, T> {
    slot: S,
    _value: PhantomData<fn() -> T>,
}

impl<S: SendSlot, T: Pod> PodSlot<S, T> {
    /// The value to fill in. Its previous contents are unspecified (any bytes are a valid `T`).
    pub fn value_mut(&mut self) -> &mut T {
        // Cannot fail: `alloc_pod` checked size and alignment of this very payload.
        bytemuck::from_bytes_mut(self.slot.payload_mut())
    }

    /// Publishes the message.
    pub fn push(self) {
        self.slot.push();
    }
}

impl<S, T> fmt::Debug for PodSlot<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodSlot")
            .field("type", &core::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

/// Why a typed message could not be read. The message is left in place (not popped).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodRecvError {
    /// The transport reported an error (including `Empty`).
    Recv(RecvError),
    /// The oldest message is not the size of the type asked for.
    WrongSize {
        /// The message's tag, to tell what it is instead.
        tag: u16,
        /// The type's size.
        expected: usize,
        /// The message's length.
        actual: usize,
    },
    /// The payload is not aligned for the type (the transport broke its promise).
    Misaligned,
}

impl fmt::Display for PodRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Recv(error) => fmt::Display::fmt(error, f),
            Self::WrongSize {
                tag,
                expected,
                actual,
            } => write!(
                f,
                "message with tag {tag} has {actual} bytes, not the {expected} of the type asked for"
            ),
            Self::Misaligned => f.write_str("message payload is misaligned for the type asked for"),
        }
    }
}

impl std::error::Error for PodRecvError {}

impl From<RecvError> for PodRecvError {
    fn from(error: RecvError) -> Self {
        Self::Recv(error)
    }
}

/// Receiving `Pod` values; implemented for every [`MessageReceiver`]. See [`PodSender`] for how
/// to lay out a message struct, and [`Receiver::recv_pod_wait`](crate::Receiver::recv_pod_wait)
/// for the blocking form on a channel.
pub trait PodReceiver: MessageReceiver {
    /// Borrows the oldest message as a `T` in place (no copy), with its tag. Pop it with
    /// [`MessageReceiver::pop`].
    ///
    /// # Errors
    /// [`PodRecvError::Recv`] from the transport; [`PodRecvError::WrongSize`] if the message is
    /// not exactly `size_of::<T>()` bytes (it stays unpopped).
    fn front_pod<T: Pod>(&mut self) -> Result<(u16, &T), PodRecvError> {
        let () = AlignCheck::<T>::OK;
        let message = self.front()?;
        let (tag, payload) = (message.tag(), message.payload());
        if payload.len() != size_of::<T>() {
            return Err(PodRecvError::WrongSize {
                tag,
                expected: size_of::<T>(),
                actual: payload.len(),
            });
        }
        let value = bytemuck::try_from_bytes(payload).map_err(|_| PodRecvError::Misaligned)?;
        Ok((tag, value))
    }

    /// Copies the oldest message out as a `T` and pops it.
    ///
    /// # Errors
    /// As [`front_pod`](Self::front_pod); nothing is popped then.
    fn recv_pod<T: Pod>(&mut self) -> Result<(u16, T), PodRecvError> {
        let (tag, value) = {
            let (tag, value) = self.front_pod::<T>()?;
            (tag, *value)
        };
        self.pop()?;
        Ok((tag, value))
    }
}

impl<R: MessageReceiver + ?Sized> PodReceiver for R {}

impl<const C: usize, const L: usize> crate::Sender<C, L> {
    /// Copies `value` into a new message tagged `tag` and publishes it, waiting for room as
    /// [`alloc_wait`](crate::Sender::alloc_wait) does: the blocking counterpart of
    /// [`PodSender::send_pod`]. Returns at once when there is room.
    ///
    /// ```
    /// use shm_channel::prelude::*;
    ///
    /// #[repr(C)]
    /// #[derive(Clone, Copy, Pod, Zeroable)]
    /// #[bytemuck(crate = "shm_channel::bytemuck")]
    /// struct Fill {
    ///     order_id: u64,
    ///     price: i64,
    ///     qty: u32,
    ///     side: u8,
    ///     _pad: [u8; 3], // explicit: `Pod` allows no hidden padding
    /// }
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let options = ChannelOptions::new().dir(dir.path());
    /// let mut a = Channel::<4096>::create_or_open("fills", End::A, &options).unwrap();
    /// let mut b = Channel::<4096>::create_or_open("fills", End::B, &options).unwrap();
    /// let wait = WaitOptions::new(WaitStrategy::Block { spin_first: 1000 });
    ///
    /// let fill = Fill { order_id: 7, price: 101_25, qty: 5, side: 1, _pad: [0; 3] };
    /// a.sender().send_pod_wait(1, &fill, &wait).unwrap();
    /// let (tag, got) = b.receiver().recv_pod_wait::<Fill>(&wait).unwrap();
    /// assert_eq!((tag, got.order_id, got.qty), (1, 7, 5));
    /// ```
    ///
    /// # Errors
    /// As [`alloc_wait`](crate::Sender::alloc_wait): [`SendError::TooLarge`] for a `T` larger
    /// than the channel's largest message, [`SendError::Full`] after the timeout,
    /// [`SendError::Disconnected`] when the receiver is gone.
    pub fn send_pod_wait<T: Pod>(
        &mut self,
        tag: u16,
        value: &T,
        options: &crate::WaitOptions,
    ) -> Result<(), SendError> {
        self.send_wait(tag, bytemuck::bytes_of(value), options)
    }
}

impl<const C: usize, const L: usize> crate::Receiver<C, L> {
    /// Waits for the next message as [`wait_readable`](crate::Receiver::wait_readable) does,
    /// then borrows it as a `T` in place (no copy), with its tag: the blocking counterpart of
    /// [`PodReceiver::front_pod`]. Pop it with [`MessageReceiver::pop`].
    ///
    /// # Errors
    /// [`PodRecvError::Recv`] with [`RecvError::TimedOut`] or [`RecvError::Disconnected`] as
    /// `wait_readable` says, or a transport error; [`PodRecvError::WrongSize`] if the message is
    /// not a `T` (it stays unpopped).
    pub fn front_pod_wait<T: Pod>(
        &mut self,
        options: &crate::WaitOptions,
    ) -> Result<(u16, &T), PodRecvError> {
        self.wait_readable(options)?;
        self.front_pod()
    }

    /// Waits for the next message, copies it out as a `T` and pops it: the blocking counterpart
    /// of [`PodReceiver::recv_pod`] (see [`send_pod_wait`](crate::Sender::send_pod_wait) for an
    /// example).
    ///
    /// # Errors
    /// As [`front_pod_wait`](Self::front_pod_wait); nothing is popped then.
    pub fn recv_pod_wait<T: Pod>(
        &mut self,
        options: &crate::WaitOptions,
    ) -> Result<(u16, T), PodRecvError> {
        self.wait_readable(options)?;
        self.recv_pod()
    }
}
