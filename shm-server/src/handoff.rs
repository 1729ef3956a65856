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
            Self::ClientGone => {
                "the client is gone (its login socket or TCP link closed: it died or closed it)"
            }
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

/// The hand-off protocol under loom: the control thread and two group threads, running the real
/// rings and the real group side ([`GroupLink`]) on a stand-in connection that records which
/// group polled it. Loom explores the interleavings (and the rings' memory orderings) and checks
/// that a connection moved between groups is polled by one group at a time, never after it was
/// given back, arrives exactly once, and that a close is confirmed exactly once.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;

    /// A stand-in connection: which groups polled it, in order.
    struct Fake {
        name: char,
        polled_by: Vec<usize>,
    }

    type Link = GroupLink<Box<Fake>, 4>;

    /// One group thread: applies events and "polls" every connection held, until it has
    /// applied the `expected` events control will send it (bounded, so loom's search is too).
    /// Returns its table.
    fn run_group(index: usize, mut link: Link, expected: usize) -> Vec<(ConnId, Box<Fake>)> {
        let mut applied = 0;
        while applied < expected {
            let now = link.apply_events(8, |_, conn| {
                assert!(conn.polled_by.iter().all(|&group| group == index));
            });
            applied += now;
            for (_, conn) in &mut link.table {
                if conn.polled_by.last() != Some(&index) {
                    conn.polled_by.push(index);
                }
            }
            if now == 0 {
                loom::thread::yield_now();
            }
        }
        assert!(
            link.unsent.is_empty(),
            "a ring of 4 overflowed with 2 replies"
        );
        core::mem::take(&mut link.table)
    }

    fn pop_wait<T: 'static, const N: usize>(receiver: &mut EventReceiver<T, N>) -> T {
        loop {
            if let Some(event) = receiver.pop() {
                return event;
            }
            loom::thread::yield_now();
        }
    }

    fn fake(name: char) -> Box<Fake> {
        Box::new(Fake {
            name,
            polled_by: Vec::new(),
        })
    }

    type ToFake = EventSender<ToGroup<Box<Fake>>, 4>;
    type FromFake = EventReceiver<FromGroup<Box<Fake>>, 4>;

    fn link(table: Vec<(ConnId, Box<Fake>)>) -> (ToFake, Link, FromFake) {
        let (to_tx, to_rx) = event_ring::<ToGroup<Box<Fake>>, 4>();
        let (from_tx, from_rx) = event_ring::<FromGroup<Box<Fake>>, 4>();
        let mut with_room = Vec::with_capacity(4);
        with_room.extend(table);
        let link = GroupLink {
            inbox: to_rx,
            outbox: from_tx,
            unsent: std::collections::VecDeque::new(),
            table: with_room,
        };
        (to_tx, link, from_rx)
    }

    fn push(sender: &mut EventSender<ToGroup<Box<Fake>>, 4>, event: ToGroup<Box<Fake>>) {
        assert!(sender.push(event).is_ok(), "a ring of 4 full");
    }

    const A: ConnId = ConnId {
        slot: 0,
        generation: 0,
    };
    const B: ConnId = ConnId {
        slot: 1,
        generation: 0,
    };

    /// Control and one group: two connections attached while the group polls, one asked back,
    /// one closed. The group polls only what it owns, gives back exactly what was asked, and
    /// confirms the close exactly once; nothing else comes back.
    #[test]
    fn attach_detach_and_close_between_control_and_a_group() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(4);
        builder.check(|| {
            let (mut to_group, group, mut from_group) = link(Vec::new());
            let thread = loom::thread::spawn(move || run_group(0, group, 4));
            push(
                &mut to_group,
                ToGroup::Attach {
                    id: A,
                    conn: fake('a'),
                },
            );
            push(
                &mut to_group,
                ToGroup::Attach {
                    id: B,
                    conn: fake('b'),
                },
            );
            push(&mut to_group, ToGroup::Detach { id: A, to: 1 });
            match pop_wait(&mut from_group) {
                FromGroup::Detached { id, conn, to } => {
                    assert_eq!((id, conn.name, to), (A, 'a', 1));
                    assert!(conn.polled_by.iter().all(|&group| group == 0));
                }
                FromGroup::Closed { .. } => panic!("nothing was closed yet"),
            }
            push(
                &mut to_group,
                ToGroup::Close {
                    id: B,
                    reason: CloseReason::Logout,
                },
            );
            match pop_wait(&mut from_group) {
                FromGroup::Closed { id, reason } => {
                    assert_eq!((id, reason), (B, CloseReason::Logout))
                }
                FromGroup::Detached { .. } => panic!("only one move was asked"),
            }
            let table = thread.join().unwrap();
            assert!(table.is_empty(), "the group kept a connection");
            assert!(from_group.pop().is_none(), "an event nobody asked for");
        });
    }

    /// A move across two group threads: group 0 owns `a` and polls it, control asks it back and
    /// forwards it to group 1. `a` is polled by group 0, then only by group 1, never both, and
    /// arrives exactly once.
    #[test]
    fn a_moved_connection_has_one_owner_at_a_time() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let (mut to_0, group_0, mut from_0) = link(vec![(A, fake('a'))]);
            let (mut to_1, group_1, mut from_1) = link(Vec::new());
            let thread_0 = loom::thread::spawn(move || run_group(0, group_0, 1));
            let thread_1 = loom::thread::spawn(move || run_group(1, group_1, 1));
            push(&mut to_0, ToGroup::Detach { id: A, to: 1 });
            match pop_wait(&mut from_0) {
                FromGroup::Detached { id, conn, to } => {
                    assert_eq!((id, to), (A, 1));
                    push(&mut to_1, ToGroup::Attach { id, conn });
                }
                FromGroup::Closed { .. } => panic!("nothing was closed"),
            }
            let (table_0, table_1) = (thread_0.join().unwrap(), thread_1.join().unwrap());
            assert!(table_0.is_empty());
            assert_eq!(table_1.len(), 1);
            let (id, conn) = &table_1[0];
            assert_eq!((*id, conn.name), (A, 'a'));
            let first_of_1 = conn
                .polled_by
                .iter()
                .position(|&group| group == 1)
                .expect("group 1 polled it");
            assert!(conn.polled_by[first_of_1..].iter().all(|&group| group == 1));
            assert!(conn.polled_by[..first_of_1].iter().all(|&group| group == 0));
            assert!(from_0.pop().is_none() && from_1.pop().is_none());
        });
    }
}
