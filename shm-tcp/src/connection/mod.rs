//! [`Connection`]: one name pair's link, both roles, implementing the message API.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;

use rustix::io::Errno;
use shm_channel::SegmentName;
use spsc_core::ReadAhead;

use crate::error::{ConnectionError, QueueError};
use crate::frame::{self, Kind, ACK_SIZE};
use crate::handshake::Handshake;
use crate::hello::{MAC_LEN, MAX_HELLO_PAYLOAD, MAX_REJECT_REASON};
use crate::options::ConnectionOptions;
use crate::queue::{pair_name, PairLock, SendQueue};
use crate::recv_buf::RecvBuffer;

mod api;
mod login;
mod wire;

pub use api::TcpSlot;
pub(crate) use login::handshake_error;
use wire::receive_buffer_size;

/// Room for the control frames queued at once: a hello, an authentication code and an ack.
const CTRL_CAP: usize = frame::frame_size(MAX_HELLO_PAYLOAD as u32)
    + frame::frame_size(MAC_LEN as u32)
    + frame::frame_size(MAX_REJECT_REASON as u32)
    + ACK_SIZE;

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// No socket. A client retries at the next `poll` past its back-off; an accepted connection
    /// waits for its client to log in again. Messages pushed now are queued.
    Disconnected,
    /// (Client) A TCP connect is under way.
    Connecting,
    /// The hello exchange is under way.
    Handshaking,
    /// Messages flow.
    Connected,
}

#[derive(Debug)]
enum Role {
    Client { addr: SocketAddr, backoff_ns: u64 },
    Accepted,
}

/// Counters of one connection, since it was made (not persisted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Handshakes completed.
    pub handshakes: u64,
    /// Times the connection was lost or refused.
    pub disconnects: u64,
    /// Messages queued again for sending by a handshake (the peer had not popped them).
    pub resent: u64,
    /// Data frames received.
    pub frames_received: u64,
    /// `write` calls made.
    pub writes: u64,
}

/// One end of a name pair over TCP: a [`MessageSender`](spsc_core::MessageSender) whose messages are persisted until the
/// peer pops them, and a [`MessageReceiver`](spsc_core::MessageReceiver) of the peer's, exactly once and in order across
/// disconnects and restarts of either side.
///
/// Made by [`Connection::connect`] / [`Connection::client`] (the side that connects), or (the
/// side that listens) by an [`Acceptor`](crate::Acceptor) or from a
/// [`PendingLogin`](crate::PendingLogin) with [`Connection::from_login`]. No thread runs behind it: the owner
/// calls [`poll`](Self::poll) with the time, which reads, writes, sends heartbeats, times out a
/// silent peer and (client) reconnects. `push` writes at once when connected (one `write`);
/// `front` reads the socket only when nothing is buffered; `alloc` reads it only when the queue
/// is full, for acknowledgements.
pub struct Connection<const C: usize> {
    queue: SendQueue<C>,
    _lock: PairLock,
    local: SegmentName,
    remote: SegmentName,
    options: ConnectionOptions,
    role: Role,
    state: LinkState,
    /// When the state last changed, or (disconnected client) when to retry.
    state_at: u64,
    connecting: Option<OwnedFd>,
    stream: Option<TcpStream>,
    peer: Option<SocketAddr>,
    handshake: Option<Handshake>,
    recv: RecvBuffer,
    /// The next queued record to send, and how many of its bytes went already.
    cursor: ReadAhead,
    partial: usize,
    ctrl: Box<[u8; CTRL_CAP]>,
    ctrl_start: usize,
    ctrl_end: usize,
    /// The pop count last sent to the peer, and the frame bytes popped since.
    ack_sent: u64,
    unacked_bytes: usize,
    /// Something may wait to be written (a push, a control frame): cleared by a flush that
    /// found nothing, so an empty `front` skips the flush.
    unsent: bool,
    ack_threshold: usize,
    /// The sequence number the next data frame from the peer must carry.
    expected_seq: u64,
    now: u64,
    last_rx: u64,
    last_tx: u64,
    /// Set by reads and writes made outside `poll` (which has no clock): the next `poll`
    /// counts them as activity at its `now`.
    rx_seen: bool,
    tx_seen: bool,
    /// A disconnect noticed outside `poll` (by `front`, `push`, `alloc`), reported by the next
    /// `poll`.
    pending_error: Option<ConnectionError>,
    stats: ConnectionStats,
}

impl<const C: usize> core::fmt::Debug for Connection<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Connection")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("state", &self.state)
            .field("peer", &self.peer)
            .field("stream", &self.queue.stream_state())
            .finish_non_exhaustive()
    }
}

fn name(text: &str) -> Result<SegmentName, QueueError> {
    SegmentName::new(text).map_err(|error| QueueError::Name {
        name: text.to_owned(),
        reason: error.to_string(),
    })
}

impl<const C: usize> Connection<C> {
    /// The largest payload a message may have: the send queue's (`C / 2 - 24`).
    pub const MAX_PAYLOAD: u32 = SendQueue::<C>::MAX_PAYLOAD;

    /// A client of the acceptor at `addr`, named `local`, expecting the acceptor to be named
    /// `remote`: opens (or creates) the pair's persisted queue in the options' folder and
    /// returns at once, disconnected; the first [`poll`](Self::poll) starts connecting.
    /// Messages may be pushed before the first connection: they wait in the queue.
    ///
    /// # Errors
    /// [`ConnectionError::Queue`] for an invalid name, a pair in use by a live process, or a
    /// wrong, truncated or corrupt state file (never re-initialised).
    pub fn client(
        addr: SocketAddr,
        local: &str,
        remote: &str,
        options: &ConnectionOptions,
    ) -> Result<Self, ConnectionError> {
        let (local, remote) = (name(local)?, name(remote)?);
        let lock = PairLock::acquire(&options.dir, &pair_name(&local, &remote)?)?;
        let queue = SendQueue::open(&options.dir, &local, &remote, None, options.durability)?;
        Ok(Self::with_queue(
            queue,
            lock,
            local,
            remote,
            options,
            Role::Client {
                addr,
                backoff_ns: options.reconnect_min_ns,
            },
        ))
    }

    /// [`client`](Self::client), then connects and completes the handshake, blocking for up to
    /// the options' connect timeout (the only call of this crate that blocks). `now` is the
    /// caller's clock, in nanoseconds, on the scale later `poll`s use ([`shm_channel::monotonic_nanos`]
    /// is one).
    ///
    /// # Errors
    /// As [`client`](Self::client); then the handshake's error (refused, impossible states,
    /// authentication, ...) or [`ConnectionError::TimedOut`].
    pub fn connect(
        addr: SocketAddr,
        local: &str,
        remote: &str,
        options: &ConnectionOptions,
    ) -> Result<Self, ConnectionError> {
        let mut conn = Self::client(addr, local, remote, options)?;
        let start = shm_channel::monotonic_nanos();
        loop {
            let now = shm_channel::monotonic_nanos();
            match conn.poll(now) {
                // A refused or failed TCP connect is retried (the acceptor may be starting).
                Err(ConnectionError::Io { .. } | ConnectionError::Closed { .. }) => {}
                Err(error) => return Err(error),
                Ok(()) => {}
            }
            if conn.state == LinkState::Connected {
                return Ok(conn);
            }
            if now.saturating_sub(start) > options.connect_timeout_ns {
                return Err(ConnectionError::TimedOut {
                    peer: Some(addr),
                    waiting_for: "the connection and handshake",
                    waited_ns: now - start,
                });
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }

    /// The acceptor's side of a pair, disconnected until a client's login is handed to it.
    pub(crate) fn accepted(
        local: SegmentName,
        remote: SegmentName,
        session: &SegmentName,
        options: &ConnectionOptions,
    ) -> Result<(Self, Option<std::path::PathBuf>), ConnectionError> {
        let lock = PairLock::acquire(&options.dir, &pair_name(&local, &remote)?)?;
        let mut queue = SendQueue::open(
            &options.dir,
            &local,
            &remote,
            Some(session),
            options.durability,
        )?;
        let mut moved = None;
        if queue.session().as_ref() != Some(session) {
            // A new session starts every pair afresh; the old state is kept aside.
            moved = Some(queue.move_aside(shm_channel::monotonic_nanos())?);
            drop(queue);
            queue = SendQueue::open(
                &options.dir,
                &local,
                &remote,
                Some(session),
                options.durability,
            )?;
        }
        Ok((
            Self::with_queue(queue, lock, local, remote, options, Role::Accepted),
            moved,
        ))
    }

    fn with_queue(
        queue: SendQueue<C>,
        lock: PairLock,
        local: SegmentName,
        remote: SegmentName,
        options: &ConnectionOptions,
        role: Role,
    ) -> Self {
        let max_frame = frame::frame_size(options.max_recv_payload).max(CTRL_CAP);
        let cursor = queue.resend_cursor();
        let popped = queue.popped();
        Self {
            queue,
            _lock: lock,
            local,
            remote,
            options: options.clone(),
            role,
            state: LinkState::Disconnected,
            state_at: 0,
            connecting: None,
            stream: None,
            peer: None,
            handshake: None,
            recv: RecvBuffer::new(receive_buffer_size(options, max_frame), max_frame),
            cursor,
            partial: 0,
            ctrl: Box::new([0; CTRL_CAP]),
            ctrl_start: 0,
            ctrl_end: 0,
            ack_sent: popped,
            unacked_bytes: 0,
            unsent: true,
            ack_threshold: usize::MAX,
            expected_seq: popped,
            now: 0,
            last_rx: 0,
            last_tx: 0,
            rx_seen: false,
            tx_seen: false,
            pending_error: None,
            stats: ConnectionStats::default(),
        }
    }

    /// Where the link stands.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// Whether messages flow now.
    pub fn is_connected(&self) -> bool {
        self.state == LinkState::Connected
    }

    /// This side's name.
    pub fn local_name(&self) -> &SegmentName {
        &self.local
    }

    /// The peer's name.
    pub fn remote_name(&self) -> &SegmentName {
        &self.remote
    }

    /// The peer's address while there is a socket.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The session this pair's state belongs to (`None` for a client before its first
    /// handshake).
    pub fn session(&self) -> Option<SegmentName> {
        self.queue.session()
    }

    /// Messages pushed and not yet popped by the peer (as far as its acknowledgements tell).
    pub fn unacknowledged(&self) -> u64 {
        let state = self.queue.stream_state();
        state.next_seq - state.first_unacked
    }

    /// This side's pop count of the peer's stream (persisted).
    pub fn popped(&self) -> u64 {
        self.queue.popped()
    }

    /// The sequence number the next pushed message gets (messages pushed since the pair started).
    pub fn next_seq(&self) -> u64 {
        self.queue.stream_state().next_seq
    }

    /// Counters since this value was made.
    pub fn stats(&self) -> ConnectionStats {
        self.stats
    }

    /// The persisted state file.
    pub fn state_file(&self) -> &std::path::Path {
        self.queue.path()
    }

    /// Does everything but the application's sends and receives: completes a connect and the
    /// handshake, reads what arrived (acknowledgements drop acknowledged messages from the
    /// queue), writes what is queued, sends a heartbeat after `heartbeat_interval` of silence,
    /// disconnects a peer silent for `peer_timeout`, and (client) reconnects with back-off.
    /// `now` is the caller's monotonic clock in nanoseconds; no clock is read here. Cost when
    /// connected and idle: one `read` that finds nothing.
    ///
    /// # Errors
    /// Why the link was just lost or a handshake failed, once per event; the connection stays
    /// usable (everything queued stays queued), and a client tries again after its back-off.
    /// Under [`RecoveryPolicy::Refuse`](crate::RecoveryPolicy::Refuse) a [`ConnectionError::Recovery`] repeats on each
    /// attempt until an operator acts.
    pub fn poll(&mut self, now: u64) -> Result<(), ConnectionError> {
        self.now = now;
        if let Some(error) = self.pending_error.take() {
            return Err(error);
        }
        let result = self.poll_state(now);
        if let Err(error) = result {
            self.disconnect_at(now);
            return Err(error);
        }
        Ok(())
    }

    fn poll_state(&mut self, now: u64) -> Result<(), ConnectionError> {
        if core::mem::take(&mut self.rx_seen) {
            self.last_rx = now;
        }
        if core::mem::take(&mut self.tx_seen) {
            self.last_tx = now;
        }
        match self.state {
            LinkState::Disconnected => {
                if let Role::Client { addr, .. } = self.role {
                    if now >= self.state_at {
                        self.start_connect(addr, now)?;
                    }
                }
                Ok(())
            }
            LinkState::Connecting => self.poll_connecting(now),
            LinkState::Handshaking => {
                self.receive()?;
                self.flush()?;
                if self.state == LinkState::Handshaking
                    && now.saturating_sub(self.state_at) > self.options.handshake_timeout_ns
                {
                    return Err(ConnectionError::TimedOut {
                        peer: self.peer,
                        waiting_for: "the peer's handshake",
                        waited_ns: now - self.state_at,
                    });
                }
                Ok(())
            }
            LinkState::Connected => {
                self.receive()?;
                if core::mem::take(&mut self.rx_seen) {
                    self.last_rx = now;
                }
                if now.saturating_sub(self.last_rx) > self.options.peer_timeout_ns {
                    return Err(ConnectionError::TimedOut {
                        peer: self.peer,
                        waiting_for: "any frame (heartbeats included)",
                        waited_ns: now - self.last_rx,
                    });
                }
                if now.saturating_sub(self.last_tx) >= self.options.heartbeat_interval_ns
                    && self.ctrl_start == self.ctrl_end
                {
                    self.queue_ack();
                }
                self.flush()
            }
        }
    }

    fn start_connect(&mut self, addr: SocketAddr, now: u64) -> Result<(), ConnectionError> {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        let family = if addr.is_ipv4() {
            AddressFamily::INET
        } else {
            AddressFamily::INET6
        };
        let io = |op, errno: Errno| ConnectionError::Io {
            op,
            peer: Some(addr),
            error: std::io::Error::from_raw_os_error(errno.raw_os_error()),
        };
        let fd = rustix::net::socket_with(
            family,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| io("creating a socket", e))?;
        self.peer = Some(addr);
        self.state_at = now;
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => self.connected_socket(fd.into(), now),
            Err(Errno::INPROGRESS | Errno::INTR) => {
                self.connecting = Some(fd);
                self.state = LinkState::Connecting;
                Ok(())
            }
            Err(errno) => Err(io("connecting", errno)),
        }
    }

    fn poll_connecting(&mut self, now: u64) -> Result<(), ConnectionError> {
        let Some(fd) = self.connecting.as_ref() else {
            return Ok(());
        };
        let peer = self.peer;
        let io = |op, errno: Errno| ConnectionError::Io {
            op,
            peer,
            error: std::io::Error::from_raw_os_error(errno.raw_os_error()),
        };
        let mut fds = [rustix::event::PollFd::new(
            fd,
            rustix::event::PollFlags::OUT,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let ready = match rustix::event::poll(&mut fds, Some(&zero)) {
            Ok(n) => n > 0,
            Err(Errno::INTR) => false,
            Err(errno) => return Err(io("waiting for the connect", errno)),
        };
        if !ready {
            if now.saturating_sub(self.state_at) > self.options.connect_timeout_ns {
                return Err(ConnectionError::TimedOut {
                    peer,
                    waiting_for: "the TCP connect",
                    waited_ns: now - self.state_at,
                });
            }
            return Ok(());
        }
        match rustix::net::sockopt::socket_error(fd) {
            Ok(Ok(())) => {}
            Ok(Err(errno)) => return Err(io("connecting", errno)),
            Err(errno) => return Err(io("reading the connect's outcome", errno)),
        }
        let fd = self.connecting.take().expect("checked above");
        self.connected_socket(TcpStream::from(fd), now)
    }

    /// A client's socket is connected: send the hello.
    fn connected_socket(&mut self, stream: TcpStream, now: u64) -> Result<(), ConnectionError> {
        stream
            .set_nodelay(true)
            .map_err(|error| ConnectionError::Io {
                op: "setting TCP_NODELAY",
                peer: self.peer,
                error,
            })?;
        self.stream = Some(stream);
        let hello = self.own_hello();
        let handshake = Handshake::client(&hello, self.options.key.as_deref());
        self.push_ctrl(Kind::Hello, 0, handshake.own_hello());
        self.handshake = Some(handshake);
        self.state = LinkState::Handshaking;
        self.state_at = now;
        self.last_rx = now;
        self.flush()
    }

    /// Closes the socket (if any); everything queued stays queued.
    pub fn disconnect(&mut self) {
        let now = self.now;
        self.disconnect_at(now);
    }

    fn disconnect_at(&mut self, now: u64) {
        let had_link = self.stream.is_some() || self.connecting.is_some();
        if let Some(stream) = self.stream.take() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        self.connecting = None;
        self.handshake = None;
        self.recv.clear();
        (self.ctrl_start, self.ctrl_end, self.partial) = (0, 0, 0);
        if self.state != LinkState::Disconnected || had_link {
            self.stats.disconnects += 1;
        }
        self.state = LinkState::Disconnected;
        self.unsent = true;
        if let Role::Client { backoff_ns, .. } = &mut self.role {
            self.state_at = now.saturating_add(*backoff_ns);
            *backoff_ns = (*backoff_ns * 2)
                .clamp(self.options.reconnect_min_ns, self.options.reconnect_max_ns);
        } else {
            self.state_at = now;
        }
    }

    /// Records a disconnect noticed outside `poll`, for the next `poll` to report.
    fn fail(&mut self, error: ConnectionError) {
        let now = self.now;
        self.disconnect_at(now);
        if self.pending_error.is_none() {
            self.pending_error = Some(error);
        }
    }
}
