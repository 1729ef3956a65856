//! The message API of a connection: [`TcpSlot`], and the `MessageSender` / `MessageReceiver`
//! implementations.

use spsc_core::{
    Message, MessageReceiver, MessageSender, MessageSlot, RecvError, SendError, SendSlot,
};

use super::{Connection, LinkState};
use crate::frame::{self, Kind, FRAME_OVERHEAD};

impl<const C: usize> Connection<C> {
    /// Sends what is queued now (after [`TcpSlot::push_more`]): one `write` for the burst.
    ///
    /// # Errors
    /// None are returned: a failed write disconnects, and the next [`poll`](Self::poll)
    /// reports why. (The `Result` leaves room for transports that report at once.)
    pub fn flush_queued(&mut self) -> Result<(), SendError> {
        if let Err(error) = self.flush() {
            self.fail(error);
        }
        Ok(())
    }

    #[inline]
    pub(super) fn after_push(&mut self, send: bool) {
        self.queue.pushed();
        self.unsent = true;
        if send && self.state == LinkState::Connected {
            if let Err(error) = self.flush() {
                self.fail(error);
            }
        }
    }
}

/// A message being written into a [`Connection`]'s send queue; [`push`](SendSlot::push)
/// publishes and sends it, [`push_more`](Self::push_more) publishes it for a later
/// [`Connection::flush_queued`]. Dropping it publishes nothing.
pub struct TcpSlot<'c, const C: usize> {
    slot: MessageSlot<'c, 'static, C>,
    conn: *mut Connection<C>,
    len: u32,
}

impl<const C: usize> core::fmt::Debug for TcpSlot<'_, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TcpSlot")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<const C: usize> TcpSlot<'_, C> {
    /// Publishes the message into the queue without writing it yet: a burst of `push_more`s
    /// then one [`Connection::flush_queued`] (or the next `poll`) goes out in one `write`.
    pub fn push_more(self) {
        let conn = self.conn;
        self.slot.push();
        // SAFETY: `conn` came from the `&'c mut Connection` that `alloc` was called with; the
        // ring slot borrowing part of it was consumed by `push` just above, so this is the only
        // live access to the connection.
        unsafe { (*conn).after_push(false) }
    }
}

impl<const C: usize> SendSlot for TcpSlot<'_, C> {
    #[inline]
    fn payload_mut(&mut self) -> &mut [u8] {
        let len = self.len as usize;
        &mut self.slot.payload_mut()[frame::FRAME_HEADER as usize..][..len]
    }

    fn tag(&self) -> u16 {
        self.slot.tag()
    }

    /// Publishes the message into the persisted queue (the commit), then writes it to the
    /// socket when connected. Cost: the ring's push, plus one `send` (a `writev` with the ack in front
    /// once a sixty-fourth of the peer's queue was popped since the last one).
    #[inline]
    fn push(self) {
        let conn = self.conn;
        self.slot.push();
        // SAFETY: as in `push_more`.
        unsafe { (*conn).after_push(true) }
    }
}

impl<const C: usize> MessageSender for Connection<C> {
    type Slot<'s> = TcpSlot<'s, C>;

    /// Reserves room in the persisted send queue, connected or not. Cost: the ring's alloc;
    /// when the queue is full, one `read` for acknowledgements first.
    fn alloc(&mut self, len: u32, tag: u16) -> Result<TcpSlot<'_, C>, SendError> {
        let conn: *mut Self = self;
        // SAFETY: `conn` is this call's `&mut self`; every access below goes through it, and the
        // slot returned borrows the connection for the lifetime of that borrow.
        unsafe {
            match (*conn).queue.alloc(len, tag) {
                Err(SendError::Full) if (*conn).state == LinkState::Connected => {
                    if let Err(error) = (*conn).receive() {
                        (*conn).fail(error);
                    }
                }
                Ok(slot) => return Ok(TcpSlot { slot, conn, len }),
                Err(error) => return Err(error),
            }
            let slot = (*conn).queue.alloc(len, tag)?;
            Ok(TcpSlot { slot, conn, len })
        }
    }

    fn max_payload(&self) -> u32 {
        Self::MAX_PAYLOAD
    }
}

impl<const C: usize> MessageReceiver for Connection<C> {
    /// The oldest message received, in place. Cost: a header read when one is buffered; else
    /// one `read` of the socket (connected), after sending an ack of this side's pops.
    #[inline]
    fn front(&mut self) -> Result<Message<'_>, RecvError> {
        if !self.front_ready() && self.state == LinkState::Connected {
            let result = if self.unsent {
                self.flush().and_then(|()| self.receive())
            } else {
                self.receive()
            };
            if let Err(error) = result {
                self.fail(error);
            }
        }
        if !self.front_ready() {
            return Err(RecvError::Empty);
        }
        let frame = self.recv.front().expect("front_ready checked it");
        let tag = u16::from_le_bytes([frame[2], frame[3]]);
        let len = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
        Ok(Message::new(tag, &frame[FRAME_OVERHEAD..8 + len]))
    }

    /// Commits the pop (one store into the persisted file) and releases the frame. An ack goes
    /// to the peer with this side's next write, or at once after a quarter of the peer's queue.
    #[inline]
    fn pop(&mut self) -> Result<(), RecvError> {
        if !self.front_ready() {
            return Err(RecvError::Empty);
        }
        let frame = self.recv.front().expect("front_ready checked it");
        let size = frame::size_from_header(frame);
        self.recv.release(size);
        self.queue.commit_pop();
        self.unacked_bytes += size;
        if self.unacked_bytes >= self.ack_threshold / 16 {
            self.unsent = true; // an ack is due with the next write
        }
        if self.unacked_bytes >= self.ack_threshold && self.state == LinkState::Connected {
            if let Err(error) = self.flush() {
                self.fail(error);
            }
        }
        Ok(())
    }
}

impl<const C: usize> Connection<C> {
    /// Whether a data frame is at the front, releasing control frames before it.
    #[inline]
    fn front_ready(&mut self) -> bool {
        loop {
            let Some(frame) = self.recv.front() else {
                return false;
            };
            if frame[16] == Kind::Data as u8 {
                return true;
            }
            let size = frame::size_from_header(frame);
            self.recv.release(size);
        }
    }
}
