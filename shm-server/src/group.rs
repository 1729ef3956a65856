//! A group: the connections one thread polls, and what its handler sees.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use shm_channel::bytemuck;
use shm_channel::{ChannelSlot, Endpoint, SegmentName, Sender};
use shm_tcp::{LinkState, TcpSlot};
use spsc_core::{
    Message, MessageReceiver, MessageRing, MessageSender, RecvError, SendError, SendSlot,
};

use crate::handoff::{CloseReason, ConnId, GroupLink, EVENT_SLOTS};

/// Events from control applied per poll: enough for a burst of logins, bounded so a flood of
/// them never holds the group's messages back.
const EVENTS_PER_POLL: usize = 32;

/// What a connection has done, as its group counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Messages handed to the handler (and popped).
    pub requests: u64,
    /// Replies pushed.
    pub replies: u64,
    /// Replies refused because the client's ring was full (the client stopped reading).
    pub replies_full: u64,
}

/// How a client is connected.
#[allow(clippy::large_enum_variant)] // always inside the boxed `ServerConn`
pub(crate) enum Transport<const C: usize> {
    /// A session segment on this host.
    Shm(Endpoint<C>),
    /// A `shm-tcp` pair connection (its persisted queue file, its socket).
    Tcp(shm_tcp::Connection<C>),
}

/// How often a group runs a TCP connection's own `poll`.
const LINK_POLL_INTERVAL: u64 = 1_000_000;

/// One client's connection as its group owns it.
pub(crate) struct ServerConn<const C: usize> {
    pub(crate) name: SegmentName,
    pub(crate) transport: Transport<C>,
    /// (TCP) When the link's own `poll` is due next.
    pub(crate) since_link_poll: u64,
    pub(crate) stats: ConnStats,
    /// When the group first saw it (0: not yet): heartbeats older than this are a previous
    /// incarnation's.
    pub(crate) since: u64,
}

/// A group's counters, written by its thread only (plain stores) and readable from any thread
/// ([`Control::group_stats`](crate::Control::group_stats)).
#[derive(Debug, Default)]
pub(crate) struct GroupCounters {
    pub(crate) polls: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) replies: AtomicU64,
    pub(crate) replies_full: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) timed_out: AtomicU64,
}

/// A snapshot of a group's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// `poll` calls.
    pub polls: u64,
    /// Messages handed to the handler.
    pub requests: u64,
    /// Replies pushed.
    pub replies: u64,
    /// Replies refused with `Full` (a client not reading).
    pub replies_full: u64,
    /// Connections the group holds now.
    pub connections: u64,
    /// Connections it closed for a missed heartbeat.
    pub timed_out: u64,
}

impl GroupCounters {
    pub(crate) fn snapshot(&self) -> GroupStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GroupStats {
            polls: load(&self.polls),
            requests: load(&self.requests),
            replies: load(&self.replies),
            replies_full: load(&self.replies_full),
            connections: load(&self.connections),
            timed_out: load(&self.timed_out),
        }
    }
}

/// Adds `by` to a counter only this thread writes: a load and a store, no locked instruction.
#[inline(always)]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

/// A message handed to the handler, borrowed in place from the client's ring.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    conn: ConnId,
    client: &'a SegmentName,
    message: Message<'a>,
}

impl<'a> Request<'a> {
    /// The connection it came from.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// The client's name.
    pub fn client(&self) -> &'a SegmentName {
        self.client
    }

    /// The message's type tag.
    pub fn tag(&self) -> u16 {
        self.message.tag()
    }

    /// The payload, 8-byte aligned, in place in the client's ring (no copy).
    pub fn payload(&self) -> &'a [u8] {
        self.message.payload()
    }
}

enum ReplyState<'a, const C: usize> {
    Ready(&'a mut Sender<C>),
    Allocated(ChannelSlot<'a, C>),
    ReadyTcp(&'a mut shm_tcp::Connection<C>),
    AllocatedTcp(TcpSlot<'a, C>),
    Spent,
}

/// The handler's way to answer a [`Request`] on its own connection, in place: at most one reply
/// per request, written straight into the client's ring.
///
/// The reply is pushed after the request is popped (tcpshm's rule): a crash between the two
/// loses at most this reply, never runs the request twice. See the crate docs.
pub struct Reply<'a, const C: usize> {
    state: ReplyState<'a, C>,
    stats: &'a mut ConnStats,
}

impl<'a, const C: usize> Reply<'a, C> {
    /// Reserves a reply of `len` bytes with `tag` in the client's ring and returns its payload to
    /// write in place; it is published once the handler returns and the request is popped.
    /// Cost: the ring's `alloc` (no syscall, no allocation).
    ///
    /// # Errors
    /// [`SendError::Full`] if the client's ring has no room (the client stopped reading: the
    /// reply is dropped and counted in [`ConnStats::replies_full`], the group goes on),
    /// [`SendError::TooLarge`] above the ring's largest message, and `Full` again for a second
    /// reply to the same request.
    pub fn alloc(&mut self, len: u32, tag: u16) -> Result<&mut [u8], SendError> {
        let allocated = match core::mem::replace(&mut self.state, ReplyState::Spent) {
            ReplyState::Ready(sender) => sender.alloc(len, tag).map(ReplyState::Allocated),
            ReplyState::ReadyTcp(tcp) => tcp.alloc(len, tag).map(ReplyState::AllocatedTcp),
            spent_or_allocated => {
                self.state = spent_or_allocated;
                return Err(SendError::Full);
            }
        };
        match allocated {
            Ok(state) => {
                self.state = state;
                match &mut self.state {
                    ReplyState::Allocated(slot) => Ok(slot.payload_mut()),
                    ReplyState::AllocatedTcp(slot) => Ok(slot.payload_mut()),
                    _ => unreachable!("just set"),
                }
            }
            Err(error) => {
                if error == SendError::Full {
                    self.stats.replies_full += 1;
                }
                Err(error)
            }
        }
    }

    /// Reserves the reply to request `id` in [`request`](crate::request)'s wire format (the
    /// id first, then a body of `body_len` bytes) and returns the body to write in place.
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc) (`TooLarge` counts the id's 8 bytes).
    pub fn alloc_answer(
        &mut self,
        id: crate::request::RequestId,
        body_len: u32,
        tag: u16,
    ) -> Result<&mut [u8], SendError> {
        const ID: usize = crate::request::REQUEST_ID_LEN;
        let len = body_len.checked_add(ID as u32).ok_or(SendError::TooLarge {
            len: u64::from(body_len) + ID as u64,
            max: MessageRing::<C>::MAX_PAYLOAD,
        })?;
        let payload = self.alloc(len, tag)?;
        let (head, body) = payload.split_at_mut(ID);
        head.copy_from_slice(&id.get().to_le_bytes());
        Ok(body)
    }

    /// Copies `payload` into a reply with `tag`: [`alloc`](Self::alloc) plus a copy.
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc).
    pub fn send(&mut self, tag: u16, payload: &[u8]) -> Result<(), SendError> {
        let len = u32::try_from(payload.len()).map_err(|_| SendError::TooLarge {
            len: payload.len() as u64,
            max: MessageRing::<C>::MAX_PAYLOAD,
        })?;
        self.alloc(len, tag)?.copy_from_slice(payload);
        Ok(())
    }

    /// Publishes the reply, if one was allocated.
    fn finish(self) {
        match self.state {
            ReplyState::Allocated(slot) => slot.push(),
            ReplyState::AllocatedTcp(slot) => slot.push(),
            _ => return,
        }
        self.stats.replies += 1;
    }
}

/// One group of connections, polled by one thread at a time with [`poll`](Self::poll). Made by
/// [`Server::new`](crate::Server::new); move it to the thread that serves it with
/// [`Server::split`](crate::Server::split).
pub struct Group<const C: usize> {
    index: usize,
    pub(crate) link: GroupLink<Box<ServerConn<C>>, EVENT_SLOTS>,
    budget: u32,
    heartbeat_interval: u64,
    heartbeat_timeout: u64,
    next_liveness: u64,
    /// Round-robin start, so the first connection is not always served first.
    next_start: usize,
    /// A TCP request's copy (8-byte aligned), so its connection can take the reply.
    scratch: Vec<u64>,
    pub(crate) counters: Arc<GroupCounters>,
}

impl<const C: usize> core::fmt::Debug for Group<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Group")
            .field("index", &self.index)
            .field("connections", &self.link.table.len())
            .finish_non_exhaustive()
    }
}

impl<const C: usize> Group<C> {
    pub(crate) fn new(
        index: usize,
        link: GroupLink<Box<ServerConn<C>>, EVENT_SLOTS>,
        budget: u32,
        heartbeat_interval: u64,
        heartbeat_timeout: u64,
        counters: Arc<GroupCounters>,
    ) -> Self {
        Self {
            index,
            link,
            budget,
            heartbeat_interval,
            heartbeat_timeout,
            next_liveness: 0,
            next_start: 0,
            scratch: vec![0; (MessageRing::<C>::MAX_PAYLOAD as usize).div_ceil(8)],
            counters,
        }
    }

    /// This group's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The connections this group holds now (its thread's view).
    pub fn len(&self) -> usize {
        self.link.table.len()
    }

    /// `true` if the group holds no connection.
    pub fn is_empty(&self) -> bool {
        self.link.table.is_empty()
    }

    /// Each connection's id, client name and counters.
    pub fn connections(&self) -> impl Iterator<Item = (ConnId, &SegmentName, ConnStats)> {
        self.link
            .table
            .iter()
            .map(|(id, conn)| (*id, &conn.name, conn.stats))
    }

    /// Each connection's id, client name and sending half, to push messages the client did not
    /// ask for (the server's own stream: market data, notices) outside the handler, from the
    /// thread that polls the group, between polls. A push here is the channel's plain
    /// `alloc`/`push` into the client's ring, `Full` when the client stopped reading, never a
    /// wait; it is not counted in [`ConnStats`]. The sender's `position` and `header` serve
    /// exactly-once bookkeeping across a crash (see `shm_channel`'s docs). Cost: none beyond
    /// the iteration.
    ///
    /// Shared-memory connections only; see [`tcp_connections`](Self::tcp_connections) for the
    /// others.
    pub fn senders(&mut self) -> impl Iterator<Item = (ConnId, &SegmentName, &mut Sender<C>)> {
        self.link
            .table
            .iter_mut()
            .filter_map(|(id, conn)| match &mut conn.transport {
                Transport::Shm(endpoint) => Some((*id, &conn.name, endpoint.sender())),
                Transport::Tcp(_) => None,
            })
    }

    /// Each TCP connection's id, client name and [`shm_tcp::Connection`], to push messages the
    /// client did not ask for, from the thread that polls the group, between polls (a push is
    /// persisted in the pair's queue and sent at once). Cost: none beyond the iteration.
    pub fn tcp_connections(
        &mut self,
    ) -> impl Iterator<Item = (ConnId, &SegmentName, &mut shm_tcp::Connection<C>)> {
        self.link
            .table
            .iter_mut()
            .filter_map(|(id, conn)| match &mut conn.transport {
                Transport::Tcp(tcp) => Some((*id, &conn.name, tcp)),
                Transport::Shm(_) => None,
            })
    }

    /// A snapshot of the group's counters.
    pub fn stats(&self) -> GroupStats {
        self.counters.snapshot()
    }

    /// Serves the group once: applies the connection events from the control thread (new
    /// logins, moves, closes), then hands each connection's ready messages to `handler`, at most
    /// the configured budget per connection, then (once per heartbeat interval, by `now`) writes
    /// the server's heartbeat into each session and closes any whose client has been silent past
    /// the timeout. Returns the number of messages handled.
    ///
    /// For each message: `handler(&request, &mut reply)` runs with the message in place, then
    /// the message is popped (the commit), then the reply, if any, is pushed. A client whose
    /// ring is full gets no reply (counted), never a wait.
    ///
    /// `now` is [`shm_channel::monotonic_nanos`] (the clock clients write heartbeats with).
    /// Cost when idle: one Acquire load per connection plus one for the event ring; no syscall,
    /// no allocation.
    pub fn poll<F>(&mut self, now: u64, mut handler: F) -> usize
    where
        F: FnMut(&Request<'_>, &mut Reply<'_, C>),
    {
        bump(&self.counters.polls, 1);
        let before = self.link.table.len();
        self.link.apply_events(EVENTS_PER_POLL, |_, _| {});
        if self.link.table.len() != before {
            self.counters
                .connections
                .store(self.link.table.len() as u64, Ordering::Relaxed);
        }
        let count = self.link.table.len();
        let mut handled = 0;
        let mut broken: Option<(usize, CloseReason)> = None;
        let start = if self.next_start >= count {
            0
        } else {
            self.next_start
        };
        for step in 0..count {
            let index = (start + step) % count;
            let (id, conn) = &mut self.link.table[index];
            let id = *id;
            let conn = &mut **conn;
            // An idle shared-memory connection costs its ring's one load (cached for the
            // `front` below when a message waits): its counters' line is not read either.
            if let Transport::Shm(endpoint) = &mut conn.transport {
                if endpoint.receiver().is_empty() {
                    continue;
                }
            }
            let full_before = conn.stats.replies_full;
            let replies_before = conn.stats.replies;
            let (served, fault) = match &mut conn.transport {
                Transport::Shm(endpoint) => serve_shm(
                    id,
                    &conn.name,
                    endpoint,
                    &mut conn.stats,
                    self.budget,
                    &mut handler,
                ),
                Transport::Tcp(tcp) => {
                    // The link's own work (acks, heartbeats, the peer's timeout), at most once
                    // a millisecond: `front` reads and `push` writes by themselves.
                    let mut fault = None;
                    if now >= conn.since_link_poll {
                        conn.since_link_poll = now.saturating_add(LINK_POLL_INTERVAL);
                        match tcp.poll(now) {
                            Ok(()) => {}
                            Err(shm_tcp::ConnectionError::TimedOut { .. }) => {
                                fault = Some(CloseReason::HeartbeatTimeout);
                            }
                            Err(_) => fault = Some(CloseReason::ClientGone),
                        }
                        if tcp.state() == LinkState::Disconnected {
                            fault = fault.or(Some(CloseReason::ClientGone));
                        }
                    }
                    if fault.is_some() {
                        (0, fault)
                    } else {
                        let scratch = bytemuck::cast_slice_mut::<u64, u8>(&mut self.scratch);
                        serve_tcp(
                            id,
                            &conn.name,
                            tcp,
                            &mut conn.stats,
                            self.budget,
                            scratch,
                            &mut handler,
                        )
                    }
                }
            };
            if conn.stats.replies != replies_before {
                bump(&self.counters.replies, conn.stats.replies - replies_before);
            }
            if conn.stats.replies_full != full_before {
                bump(
                    &self.counters.replies_full,
                    conn.stats.replies_full - full_before,
                );
            }
            if let Some(reason) = fault {
                broken = broken.or(Some((index, reason)));
            }
            handled += served as usize;
        }
        self.next_start = start + 1;
        if handled > 0 {
            bump(&self.counters.requests, handled as u64);
        }
        if let Some((index, reason)) = broken {
            drop(self.link.close_at(index, reason));
            self.counters
                .connections
                .store(self.link.table.len() as u64, Ordering::Relaxed);
        }
        if now >= self.next_liveness {
            self.check_liveness(now);
        }
        handled
    }

    /// Writes the server's heartbeat into every session and closes those whose client has been
    /// silent past the timeout (its heartbeat, or its attach if it never wrote a newer one).
    fn check_liveness(&mut self, now: u64) {
        self.next_liveness = now.saturating_add(self.heartbeat_interval);
        let mut index = 0;
        while index < self.link.table.len() {
            let conn = &mut self.link.table[index].1;
            if conn.since == 0 {
                conn.since = now;
            }
            // A TCP connection's link times its peer out itself (see `poll`).
            let Transport::Shm(endpoint) = &conn.transport else {
                index += 1;
                continue;
            };
            endpoint.heartbeat(now);
            let since_attach = now.saturating_sub(conn.since);
            let silent = endpoint
                .peer_heartbeat_age(now)
                .map_or(since_attach, |age| age.min(since_attach));
            if silent > self.heartbeat_timeout {
                drop(self.link.close_at(index, CloseReason::HeartbeatTimeout));
                bump(&self.counters.timed_out, 1);
                self.counters
                    .connections
                    .store(self.link.table.len() as u64, Ordering::Relaxed);
            } else {
                index += 1;
            }
        }
    }
}

/// Serves up to `budget` messages of a shared-memory connection, in place: the handler reads
/// the request in the client's ring and writes its reply in the other ring, then the request is
/// popped, then the reply pushed. Returns the count and a fault that closes the connection.
fn serve_shm<const C: usize, F>(
    id: ConnId,
    name: &SegmentName,
    endpoint: &mut Endpoint<C>,
    stats: &mut ConnStats,
    budget: u32,
    handler: &mut F,
) -> (u32, Option<CloseReason>)
where
    F: FnMut(&Request<'_>, &mut Reply<'_, C>),
{
    let (sender, receiver) = endpoint.halves();
    let mut served = 0;
    while served < budget {
        let message = match receiver.front() {
            Ok(message) => message,
            Err(RecvError::Empty) => break,
            Err(_) => return (served, Some(CloseReason::Corrupt)),
        };
        let request = Request {
            conn: id,
            client: name,
            message,
        };
        let mut reply = Reply {
            state: ReplyState::Ready(&mut *sender),
            stats: &mut *stats,
        };
        handler(&request, &mut reply);
        // Pop is the commit, before the reply is published (see `Reply`).
        if receiver.pop().is_err() {
            return (served, Some(CloseReason::Corrupt));
        }
        reply.finish();
        stats.requests += 1;
        served += 1;
    }
    (served, None)
}

/// Serves up to `budget` messages of a TCP connection. Its receive buffer and its send queue
/// are one object, so the request is copied to `scratch` (a `memcpy` of its bytes, small next
/// to the kernel's copy it already took) and popped before the handler writes the reply in
/// place into the persisted queue; the order is the same: pop, then push.
fn serve_tcp<const C: usize, F>(
    id: ConnId,
    name: &SegmentName,
    tcp: &mut shm_tcp::Connection<C>,
    stats: &mut ConnStats,
    budget: u32,
    scratch: &mut [u8],
    handler: &mut F,
) -> (u32, Option<CloseReason>)
where
    F: FnMut(&Request<'_>, &mut Reply<'_, C>),
{
    let mut served = 0;
    while served < budget {
        let (tag, len) = match tcp.front() {
            Ok(message) => {
                let len = message.len();
                match scratch.get_mut(..len) {
                    Some(copy) => copy.copy_from_slice(message.payload()),
                    None => return (served, Some(CloseReason::Corrupt)),
                }
                (message.tag(), len)
            }
            Err(RecvError::Empty) => break,
            Err(RecvError::Corrupt { .. }) => return (served, Some(CloseReason::Corrupt)),
            Err(_) => return (served, Some(CloseReason::ClientGone)),
        };
        if tcp.pop().is_err() {
            return (served, Some(CloseReason::ClientGone));
        }
        let request = Request {
            conn: id,
            client: name,
            message: Message::new(tag, &scratch[..len]),
        };
        let mut reply = Reply {
            state: ReplyState::ReadyTcp(&mut *tcp),
            stats: &mut *stats,
        };
        handler(&request, &mut reply);
        reply.finish();
        stats.requests += 1;
        served += 1;
    }
    (served, None)
}
