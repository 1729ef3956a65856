//! The hand-off between the control thread and the group threads: two [`spsc_core::Ring`]s per
//! group (control → group, group → control) carrying owned values, and the ownership rule they
//! implement.
//!
//! # The protocol
//!
//! A connection is owned by exactly one party at any instant, and only its owner touches it:
//!
//! - the control thread makes it (after a login) and pushes `Attach` to its group: from then on
//!   the group owns it (it is a value inside the ring between the two);
//! - to move it, control pushes `Detach { to }`; the group takes it out of its table and pushes
//!   it back (`Detached`); control pushes `Attach` to the new group. In transit it is polled by
//!   nobody, and its peer keeps queueing into the segment: nothing is lost;
//! - to close it (login socket closed, logout), control pushes `Close`; the group drops it and
//!   answers `Closed`. A group that closes one itself (heartbeat timeout, corrupt ring) answers
//!   `Closed` unasked. Control frees the client's name only on `Closed`, so a re-login never
//!   opens an end the old connection still holds.
//!
//! There is no shared table: the group's table is the group thread's alone, control's directory
//! is control's alone, and everything that crosses goes through a ring whose push is a Release
//! store the pop Acquires (spsc-core's verified ring). `tests/loom.rs` models this protocol with
//! loom on the real types below.

use std::sync::Arc;

use spsc_core::{Consumer, Producer, Ring};

/// Slots per event ring. A group never has more than its connections in flight each way, and
/// the server caps connections per group at 1024, so a push can only fail when the other side
/// has stopped polling; control keeps what did not fit and retries (see `Control`).
pub(crate) const EVENT_SLOTS: usize = 2048;

/// An identifier of one connection, unique for the life of the server process: a slot in the
/// control thread's directory and the generation of that slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

impl ConnId {
    /// A printable number (slot and generation), for logs.
    pub fn as_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.slot)
    }
}

impl core::fmt::Display for ConnId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "#{}.{}", self.slot, self.generation)
    }
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client logged out.
    Logout,
    /// The client's login socket closed without a logout: the client process died (or closed
    /// it).
    ClientGone,
    /// The client wrote no heartbeat for longer than the configured timeout (hung or stopped).
    HeartbeatTimeout,
    /// The client's ring held an impossible record.
    Corrupt,
    /// The client sent something on its login socket that the protocol does not allow.
    Protocol,
    /// The server was shut down (`Server` dropped).
    Shutdown,
}

impl core::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Logout => "the client logged out",
            Self::ClientGone => "the client's login socket closed (the client died or closed it)",
            Self::HeartbeatTimeout => "the client sent no heartbeat within the timeout",
            Self::Corrupt => "the client's ring holds an impossible record",
            Self::Protocol => "the client broke the login protocol on its socket",
            Self::Shutdown => "the server shut down",
        })
    }
}

/// Control → group.
pub(crate) enum ToGroup<T> {
    /// Own and poll `conn` from now on.
    Attach { id: ConnId, conn: T },
    /// Give `id` back for a move to group `to`.
    Detach { id: ConnId, to: usize },
    /// Drop `id`.
    Close { id: ConnId, reason: CloseReason },
}

/// Group → control.
pub(crate) enum FromGroup<T> {
    /// `conn`, taken out for a move to group `to`.
    Detached { id: ConnId, conn: T, to: usize },
    /// `id` was dropped (asked by control, or by the group itself).
    Closed { id: ConnId, reason: CloseReason },
}

/// The sending half of an event ring, owning its share of the ring.
pub(crate) struct EventSender<T: 'static, const N: usize> {
    // Declared before `_ring`, so dropped first: the handle never outlives the ring it borrows.
    producer: Producer<'static, T, N>,
    _ring: Arc<Ring<T, N>>,
}

/// The receiving half of an event ring.
pub(crate) struct EventReceiver<T: 'static, const N: usize> {
    consumer: Consumer<'static, T, N>,
    _ring: Arc<Ring<T, N>>,
}

/// A new event ring, split into its two halves (which may go to two threads).
pub(crate) fn event_ring<T: 'static, const N: usize>() -> (EventSender<T, N>, EventReceiver<T, N>) {
    let mut ring = Arc::new(Ring::<T, N>::new());
    let exclusive = Arc::get_mut(&mut ring).expect("a new Arc has no other owner");
    // Claims left by nobody: `split` resets owners under the exclusive borrow and hands both
    // handles out.
    let (producer, consumer) = exclusive.split();
    // SAFETY: the handles borrow the ring inside the `Arc`'s heap allocation, which never moves
    // and lives as long as any clone of the `Arc`. Each half keeps a clone next to its handle and
    // drops the handle first (field order), so the `'static` borrow never outlives the ring; the
    // handles themselves keep the single-producer / single-consumer rule (one of each, moved into
    // their halves, never duplicated).
    let (producer, consumer) = unsafe {
        (
            core::mem::transmute::<Producer<'_, T, N>, Producer<'static, T, N>>(producer),
            core::mem::transmute::<Consumer<'_, T, N>, Consumer<'static, T, N>>(consumer),
        )
    };
    (
        EventSender {
            producer,
            _ring: Arc::clone(&ring),
        },
        EventReceiver {
            consumer,
            _ring: ring,
        },
    )
}

impl<T: 'static, const N: usize> EventSender<T, N> {
    /// Pushes `event`, or gives it back if the ring is full.
    pub(crate) fn push(&mut self, event: T) -> Result<(), T> {
        self.producer.push(event).map_err(|full| full.0)
    }
}

impl<T: 'static, const N: usize> EventReceiver<T, N> {
    /// The oldest event, if any: one Acquire load when there is none.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<T> {
        self.consumer.pop()
    }
}

/// The group side of the protocol: its table of owned connections and its two rings. Generic
/// over the connection type so that the loom model runs the real code on a stand-in.
pub(crate) struct GroupLink<T: 'static, const N: usize> {
    pub(crate) inbox: EventReceiver<ToGroup<T>, N>,
    pub(crate) outbox: EventSender<FromGroup<T>, N>,
    /// Replies that did not fit in `outbox` (control stopped polling): sent first next time.
    /// Bounded by the table's size (each connection leaves at most once).
    pub(crate) unsent: std::collections::VecDeque<FromGroup<T>>,
    pub(crate) table: Vec<(ConnId, T)>,
}

impl<T: 'static, const N: usize> GroupLink<T, N> {
    /// Applies the events control sent, at most `limit` of them (bounded work per poll). Returns
    /// how many were applied. `on_close` sees each connection dropped here.
    pub(crate) fn apply_events(
        &mut self,
        limit: usize,
        mut on_close: impl FnMut(ConnId, T),
    ) -> usize {
        self.flush_unsent();
        let mut applied = 0;
        while applied < limit {
            let Some(event) = self.inbox.pop() else { break };
            applied += 1;
            match event {
                ToGroup::Attach { id, conn } => {
                    debug_assert!(self.table.iter().all(|(held, _)| *held != id));
                    debug_assert!(self.table.len() < self.table.capacity());
                    self.table.push((id, conn));
                }
                ToGroup::Detach { id, to } => {
                    if let Some(index) = self.position(id) {
                        let (id, conn) = self.table.swap_remove(index);
                        self.send(FromGroup::Detached { id, conn, to });
                    }
                }
                ToGroup::Close { id, reason } => {
                    if let Some(index) = self.position(id) {
                        let (id, conn) = self.table.swap_remove(index);
                        on_close(id, conn);
                        self.send(FromGroup::Closed { id, reason });
                    }
                }
            }
        }
        applied
    }

    /// Drops the connection at `index` on the group's own decision and tells control.
    pub(crate) fn close_at(&mut self, index: usize, reason: CloseReason) -> (ConnId, T) {
        let (id, conn) = self.table.swap_remove(index);
        self.send(FromGroup::Closed { id, reason });
        (id, conn)
    }

    fn position(&self, id: ConnId) -> Option<usize> {
        self.table.iter().position(|(held, _)| *held == id)
    }

    fn send(&mut self, event: FromGroup<T>) {
        if !self.unsent.is_empty() {
            self.unsent.push_back(event);
            return;
        }
        if let Err(event) = self.outbox.push(event) {
            self.unsent.push_back(event);
        }
    }

    fn flush_unsent(&mut self) {
        while let Some(event) = self.unsent.pop_front() {
            if let Err(event) = self.outbox.push(event) {
                self.unsent.push_front(event);
                return;
            }
        }
    }
}
