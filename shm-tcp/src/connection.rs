//! [`Connection`]: one name pair's link, both roles, implementing the message API.

use std::io::{IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;

use rustix::io::Errno;
use shm_channel::SegmentName;
use spsc_core::{
    Message, MessageReceiver, MessageSender, MessageSlot, ReadAhead, RecvError, SendError, SendSlot,
};

use crate::error::{ConnectionError, QueueError};
use crate::frame::{self, FrameInfo, Kind, ACK_SIZE, FRAME_OVERHEAD};
use crate::handshake::{Handshake, HandshakeError, Step};
use crate::hello::{
    check_streams, Hello, RecoveryError, MAC_LEN, MAX_HELLO_PAYLOAD, MAX_REJECT_REASON,
};
use crate::options::{ConnectionOptions, RecoveryPolicy};
use crate::queue::{pair_name, PairLock, SendQueue};
use crate::recv_buf::RecvBuffer;

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

/// One end of a name pair over TCP: a [`MessageSender`] whose messages are persisted until the
/// peer pops them, and a [`MessageReceiver`] of the peer's, exactly once and in order across
/// disconnects and restarts of either side.
///
/// Made by [`Connection::connect`] / [`Connection::client`] (the side that connects) or by an
/// [`Acceptor`](crate::Acceptor) (the side that listens). No thread runs behind it: the owner
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
    /// Under [`RecoveryPolicy::Refuse`] a [`ConnectionError::Recovery`] repeats on each
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

    /// The acceptor hands over a client's socket whose hello it has read (`handshake`), with any
    /// bytes that followed the hello (`rest`). Any socket this connection still had is dropped:
    /// the client logged in again.
    pub(crate) fn take_login(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        mut handshake: Handshake,
        rest: &[u8],
        now: u64,
    ) -> Result<(), ConnectionError> {
        self.now = now;
        self.disconnect_at(now);
        self.stream = Some(stream);
        self.peer = Some(peer);
        self.state = LinkState::Handshaking;
        self.state_at = now;
        self.last_rx = now;
        let hello = self.own_hello();
        let step = handshake
            .answer(&hello)
            .map_err(|error| handshake_error(Some(peer), error))?;
        self.push_ctrl(Kind::Hello, 0, handshake.own_hello());
        self.handshake = Some(handshake);
        let result = (|| {
            match step {
                Step::SendAuth(code) => self.push_ctrl(Kind::Auth, 0, &code),
                Step::Done => self.finish_handshake()?,
                _ => {}
            }
            let room = self.recv.free_space();
            if rest.len() > room.len() {
                return Err(ConnectionError::Protocol {
                    peer: Some(peer),
                    reason: "sent more than a receive buffer before the handshake ended".into(),
                });
            }
            room[..rest.len()].copy_from_slice(rest);
            self.recv.wrote(rest.len());
            self.parse()?;
            self.flush()
        })();
        if let Err(error) = result {
            let _ = self.flush();
            // The login was handed over, so (as when the handshake completes in `poll`, with a
            // key) its failure is this connection's to report, at its next `poll`, while the
            // acceptor reports the login and any state file it moved aside for it.
            self.fail(error);
        }
        Ok(())
    }

    fn own_hello(&self) -> Hello {
        let state = self.queue.stream_state();
        let mut nonce = [0u8; 16];
        fill_random(&mut nonce);
        Hello {
            authenticated: self.options.key.is_some(),
            max_payload: Self::MAX_PAYLOAD,
            first_unacked: state.first_unacked,
            next_seq: state.next_seq,
            popped: state.popped,
            nonce,
            name: self.local.clone(),
            peer_name: self.remote.clone(),
            session: self.queue.session(),
        }
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

    fn push_ctrl(&mut self, kind: Kind, seq: u64, payload: &[u8]) {
        let end = self.ctrl_end;
        let size = frame::write_control(&mut self.ctrl[end..], kind, seq, payload);
        self.ctrl_end += size;
    }

    /// Queues an ack frame with the current pop count (also the heartbeat).
    fn queue_ack(&mut self) {
        let popped = self.queue.popped();
        self.push_ctrl(Kind::Ack, popped, &[]);
        self.ack_sent = popped;
        self.unacked_bytes = 0;
    }

    /// Writes pending control frames and (connected) queued records, until done or the socket
    /// is full. One `writev` per round; a push normally needs one round.
    fn flush(&mut self) -> Result<(), ConnectionError> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let connected = self.state == LinkState::Connected;
        loop {
            if connected && self.ctrl_start == self.ctrl_end && self.queue.popped() != self.ack_sent
            {
                let popped = self.queue.popped();
                let size = frame::write_control(&mut self.ctrl[..], Kind::Ack, popped, &[]);
                (self.ctrl_start, self.ctrl_end) = (0, size);
                self.ack_sent = popped;
                self.unacked_bytes = 0;
            }
            // A data frame partly written goes out whole first: a control frame (an ack, a
            // heartbeat) written now would land inside it on the wire.
            let ctrl = if self.partial > 0 {
                &[][..]
            } else {
                &self.ctrl[self.ctrl_start..self.ctrl_end]
            };
            let run = if connected {
                Some(self.queue.run(self.cursor, self.options.max_write)?)
            } else {
                None
            };
            let data = match &run {
                Some(run) => &run.bytes()[self.partial.min(run.bytes().len())..],
                None => &[][..],
            };
            if ctrl.is_empty() && data.is_empty() {
                return Ok(());
            }
            let total = ctrl.len() + data.len();
            let written = match stream.write_vectored(&[IoSlice::new(ctrl), IoSlice::new(data)]) {
                Ok(0) => {
                    return Err(ConnectionError::Closed { peer: self.peer });
                }
                Ok(n) => n,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    return Err(ConnectionError::Io {
                        op: "writing",
                        peer: self.peer,
                        error,
                    })
                }
            };
            self.stats.writes += 1;
            let from_ctrl = written.min(ctrl.len());
            let from_data = written - from_ctrl;
            if let (true, Some(run)) = (from_data > 0, &run) {
                let (cursor, partial) = run.cursor_after(self.partial + from_data);
                self.cursor = cursor;
                self.partial = partial;
            }
            self.ctrl_start += from_ctrl;
            if self.ctrl_start == self.ctrl_end {
                (self.ctrl_start, self.ctrl_end) = (0, 0);
            }
            self.tx_seen = true;
            if written < total {
                return Ok(()); // the socket's buffer is full: the next poll continues
            }
        }
    }

    /// Reads once from the socket into the receive buffer and handles every complete frame.
    fn receive(&mut self) -> Result<(), ConnectionError> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let room = self.recv.free_space();
        if room.is_empty() {
            // Full: TCP's flow control holds the peer back until pops make room. The peer's
            // silence is then ours, not a sign that it is gone.
            self.rx_seen = true;
            return Ok(());
        }
        match stream.read(room) {
            Ok(0) => return Err(ConnectionError::Closed { peer: self.peer }),
            Ok(n) => {
                self.recv.wrote(n);
                self.rx_seen = true;
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => return Ok(()),
            Err(error) => {
                return Err(ConnectionError::Io {
                    op: "reading",
                    peer: self.peer,
                    error,
                })
            }
        }
        self.parse()
    }

    /// Checks and handles every complete frame received.
    fn parse(&mut self) -> Result<(), ConnectionError> {
        loop {
            let start = self.recv.parse_position();
            let info = match frame::decode(self.recv.unparsed(), self.options.max_recv_payload) {
                Ok(Some(info)) => info,
                Ok(None) => return Ok(()),
                Err(error) => {
                    return Err(ConnectionError::Frame {
                        peer: self.peer,
                        error,
                    })
                }
            };
            match self.state {
                LinkState::Connected => self.on_frame(&info, start)?,
                LinkState::Handshaking => {
                    self.on_handshake_frame(&info)?;
                    self.recv.parsed(info.size);
                    self.recv.release(info.size);
                }
                LinkState::Disconnected | LinkState::Connecting => return Ok(()),
            }
        }
    }

    fn on_frame(&mut self, info: &FrameInfo, start: usize) -> Result<(), ConnectionError> {
        match info.kind {
            Kind::Data => {
                if info.seq != self.expected_seq {
                    return Err(ConnectionError::Protocol {
                        peer: self.peer,
                        reason: format!(
                            "data frame with sequence number {} where {} was due",
                            info.seq, self.expected_seq
                        ),
                    });
                }
                self.expected_seq += 1;
                self.stats.frames_received += 1;
                self.recv.parsed(info.size);
            }
            Kind::Ack => {
                self.queue.ack(info.seq)?;
                self.recv.parsed(info.size);
                if self.recv.nothing_undelivered_before(start) {
                    self.recv.release(info.size);
                }
            }
            Kind::Reject => {
                let payload = &self.recv.unparsed()
                    [FRAME_OVERHEAD..FRAME_OVERHEAD + info.payload_len as usize];
                return Err(ConnectionError::Rejected {
                    peer: self.peer,
                    reason: String::from_utf8_lossy(payload).into_owned(),
                });
            }
            Kind::Hello | Kind::Auth => {
                return Err(ConnectionError::Protocol {
                    peer: self.peer,
                    reason: format!("{:?} frame after the handshake", info.kind),
                })
            }
        }
        Ok(())
    }

    fn on_handshake_frame(&mut self, info: &FrameInfo) -> Result<(), ConnectionError> {
        let peer = self.peer;
        let Some(handshake) = self.handshake.as_mut() else {
            return Err(ConnectionError::Protocol {
                peer,
                reason: "frame before the handshake started".into(),
            });
        };
        let payload =
            &self.recv.unparsed()[FRAME_OVERHEAD..FRAME_OVERHEAD + info.payload_len as usize];
        let step = match handshake.on_frame(info, payload) {
            Ok(step) => step,
            // With a key, the acceptor's side waits for the client's code after sending its own:
            // a refusal then is the client's verdict on that code.
            Err(HandshakeError::Rejected(_))
                if matches!(self.role, Role::Accepted) && self.options.key.is_some() =>
            {
                return Err(ConnectionError::Authentication {
                    peer,
                    reason: "the peer refused this side's authentication code: the keys differ",
                });
            }
            Err(error) => {
                let error = handshake_error(peer, error);
                if let ConnectionError::Authentication { reason, .. } = error {
                    // The peer waits for this side's code: tell it why none comes.
                    self.reject(reason);
                }
                return Err(error);
            }
        };
        match step {
            Step::Wait => Ok(()),
            Step::SendAuth(code) => {
                self.push_ctrl(Kind::Auth, 0, &code);
                Ok(())
            }
            Step::SendAuthAndDone(code) => {
                self.push_ctrl(Kind::Auth, 0, &code);
                self.finish_handshake()
            }
            Step::Done => self.finish_handshake(),
            Step::NeedAnswer => Err(ConnectionError::Protocol {
                peer,
                reason: "a second hello".into(),
            }),
        }
    }

    /// Both hellos are in (and authenticated): check the peer and the two states, then resume.
    fn finish_handshake(&mut self) -> Result<(), ConnectionError> {
        let peer_addr = self.peer;
        let hello = self
            .handshake
            .take()
            .and_then(|h| h.peer().cloned())
            .expect("a completed handshake has the peer's hello");
        let names = [
            (self.remote.clone(), &hello.name),
            (self.local.clone(), &hello.peer_name),
        ];
        for (expected, found) in names {
            if &expected != found {
                let reason = format!("expected \"{expected}\", not \"{found}\"");
                self.reject(&reason);
                return Err(ConnectionError::WrongPeer {
                    peer: peer_addr,
                    expected: expected.to_string(),
                    found: found.to_string(),
                });
            }
        }
        if hello.max_payload > self.options.max_recv_payload {
            let error = ConnectionError::MessageSizeMismatch {
                peer: peer_addr,
                peer_max: hello.max_payload,
                our_max: self.options.max_recv_payload,
            };
            self.reject(&error.to_string());
            return Err(error);
        }
        let ours = self.queue.stream_state();
        let theirs = crate::hello::StreamState {
            first_unacked: hello.first_unacked,
            next_seq: hello.next_seq,
            popped: hello.popped,
        };
        let verdict = self
            .check_session(&hello, &ours)
            .and_then(|()| check_streams(&ours, &theirs));
        if let Err(error) = verdict {
            self.reject(&error.to_string());
            let session_mismatch = matches!(error, RecoveryError::SessionMismatch { .. });
            let moved_to = match (self.options.policy, &self.role) {
                (RecoveryPolicy::StartAfresh, Role::Client { .. }) => {
                    Some(self.start_afresh(hello.session.as_ref())?)
                }
                (RecoveryPolicy::StartAfresh, Role::Accepted) if !session_mismatch => {
                    let session = self.queue.session();
                    Some(self.start_afresh(session.as_ref())?)
                }
                _ => None,
            };
            if moved_to.is_some() {
                if let Role::Client { backoff_ns, .. } = &mut self.role {
                    *backoff_ns = 0; // retry at once, with the fresh state
                }
            }
            return Err(ConnectionError::Recovery {
                peer: peer_addr,
                error,
                moved_to,
            });
        }
        if self.queue.session().is_none() {
            if let Some(session) = &hello.session {
                self.queue.set_session(session);
            }
        }
        // Drop what the peer popped (checked to lie in our unacknowledged range), resend the rest.
        self.queue.ack(hello.popped)?;
        self.cursor = self.queue.resend_cursor();
        self.partial = 0;
        self.stats.resent += self.queue.stream_state().next_seq - hello.popped;
        self.expected_seq = self.queue.popped();
        self.ack_sent = self.queue.popped();
        self.unacked_bytes = 0;
        self.ack_threshold = ((hello.max_payload as usize + FRAME_OVERHEAD) / 2).max(ACK_SIZE);
        self.state = LinkState::Connected;
        self.state_at = self.now;
        self.last_rx = self.now;
        self.stats.handshakes += 1;
        if let Role::Client { backoff_ns, .. } = &mut self.role {
            *backoff_ns = self.options.reconnect_min_ns;
        }
        Ok(())
    }

    fn check_session(
        &self,
        hello: &Hello,
        ours: &crate::hello::StreamState,
    ) -> Result<(), RecoveryError> {
        let text =
            |s: Option<&SegmentName>| s.map_or_else(|| "(none)".to_owned(), |s| s.to_string());
        let mine = self.queue.session();
        let fresh = ours.popped == 0 && ours.first_unacked == 0;
        let agree = match (&self.role, &mine, &hello.session) {
            (Role::Client { .. }, None, Some(_)) => fresh,
            (Role::Client { .. }, Some(a), Some(b)) => a == b,
            (Role::Client { .. }, _, None) => false,
            (Role::Accepted, Some(_), None) => true,
            (Role::Accepted, Some(a), Some(b)) => a == b,
            (Role::Accepted, None, _) => false,
        };
        if agree {
            Ok(())
        } else {
            Err(RecoveryError::SessionMismatch {
                ours: text(mine.as_ref()),
                theirs: text(hello.session.as_ref()),
            })
        }
    }

    /// Moves the state file aside and starts the pair from nothing.
    fn start_afresh(
        &mut self,
        session: Option<&SegmentName>,
    ) -> Result<std::path::PathBuf, ConnectionError> {
        let moved = self.queue.move_aside(self.now)?;
        let fresh = SendQueue::open(
            &self.options.dir,
            &self.local,
            &self.remote,
            session,
            self.options.durability,
        )?;
        self.queue = fresh;
        self.cursor = self.queue.resend_cursor();
        self.expected_seq = 0;
        self.ack_sent = 0;
        Ok(moved)
    }

    /// Tells the peer why (best effort: the connection ends anyway).
    fn reject(&mut self, reason: &str) {
        let mut end = reason.len().min(MAX_REJECT_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        if self.ctrl_end + frame::frame_size(end as u32) <= CTRL_CAP {
            self.push_ctrl(Kind::Reject, 0, &reason.as_bytes()[..end]);
        }
        let state = self.state;
        self.state = LinkState::Handshaking; // control frames only
        let _ = self.flush();
        self.state = state;
    }

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
    fn after_push(&mut self, send: bool) {
        self.queue.pushed();
        if send && self.state == LinkState::Connected {
            if let Err(error) = self.flush() {
                self.fail(error);
            }
        }
    }
}

/// The receive buffer's size: the options', raised to hold everything the largest peer queue
/// accepted can have unacknowledged, plus two of the largest frames. Then the peer can never fill
/// it, so its acknowledgements (which travel behind its data) are always read: an application
/// that holds a message at the front while it waits for room to push cannot deadlock.
fn receive_buffer_size(options: &ConnectionOptions, max_frame: usize) -> usize {
    // A queue of `C` bytes sends payloads of up to `C / 2 - 24` bytes (its hello says so, and
    // larger ones are refused), so the largest peer queue accepted is this many bytes.
    let largest_peer_queue = 2 * (options.max_recv_payload as usize + FRAME_OVERHEAD);
    options.recv_buffer.max(largest_peer_queue + 2 * max_frame)
}

pub(crate) fn handshake_error(peer: Option<SocketAddr>, error: HandshakeError) -> ConnectionError {
    match error {
        HandshakeError::Hello(error) => ConnectionError::Hello { peer, error },
        HandshakeError::Rejected(reason) => ConnectionError::Rejected { peer, reason },
        HandshakeError::Unexpected { kind, waiting_for } => ConnectionError::Protocol {
            peer,
            reason: format!("a {kind:?} frame while waiting for {waiting_for}"),
        },
        HandshakeError::Authentication(reason) => ConnectionError::Authentication { peer, reason },
        HandshakeError::OutOfTurn => ConnectionError::Protocol {
            peer,
            reason: "the handshake was answered out of turn".into(),
        },
    }
}

pub(crate) fn fill_random(out: &mut [u8]) {
    let mut filled = 0;
    while filled < out.len() {
        match rustix::rand::getrandom(&mut out[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(_) => {
                // No entropy source: a nonce from the clock and pid still differs per hello.
                let seed = shm_channel::monotonic_nanos() ^ u64::from(std::process::id()) << 32;
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte = (seed.rotate_left(i as u32 * 8) as u8) ^ i as u8;
                }
                return;
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
    /// socket when connected. Cost: the ring's push, plus one `writev` (with the ack in front
    /// when this side popped something since the last one).
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
            let result = self.flush().and_then(|()| self.receive());
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
        let len = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let size = 8 + (len as usize).next_multiple_of(8);
        self.recv.release(size);
        self.queue.commit_pop();
        self.unacked_bytes += size;
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
            let len = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
            self.recv.release(8 + (len as usize).next_multiple_of(8));
        }
    }
}
