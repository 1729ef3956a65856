//! The control side: the login socket, pending and live logins, the directory of connections,
//! and the hand-off to the groups.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use rustix::event::epoll;
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use shm_channel::{Channel, ChannelOptions, End, SegmentName};

use crate::config::{socket_path, ServerConfig, MAX_PENDING_LOGINS};
use crate::error::{MoveError, ServerError};
use crate::group::{GroupCounters, GroupStats, ServerConn, Transport};
use crate::handoff::{
    CloseReason, ConnId, EventReceiver, EventSender, FromGroup, ToGroup, EVENT_SLOTS,
};
use crate::wire::{Answer, ClientRecord, RECORD_LEN};
use shm_tcp::{ConnectionOptions, ListenerEvent, LoginListener};

/// Ready live sockets taken per `epoll_wait`.
const EPOLL_BATCH: usize = 64;
/// The epoll key of the login listener (live sockets are keyed by their directory slot).
const LISTENER_KEY: u64 = u64::MAX;

/// What a login check sees of a client asking to log in.
#[derive(Debug)]
pub struct LoginRequest<'a> {
    name: &'a SegmentName,
    last_server: Option<&'a SegmentName>,
    transport: LoginTransport,
    server: &'a SegmentName,
    group_loads: &'a [usize],
    per_group: usize,
}

/// How a client asking to log in reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginTransport {
    /// On this host, through the login socket; its session is a shared-memory segment.
    SharedMemory {
        /// The client's pid, from the socket's `SO_PEERCRED`.
        pid: u32,
        /// Its uid, from `SO_PEERCRED` (already checked against the allow list).
        uid: u32,
    },
    /// Over TCP (`shm-tcp`); its session is the pair's persisted queues.
    Tcp {
        /// The client's address.
        peer: SocketAddr,
    },
}

impl<'a> LoginRequest<'a> {
    /// The client's name (one half of the session's name pair).
    pub fn name(&self) -> &'a SegmentName {
        self.name
    }

    /// The server name (TCP: the session) the client last logged in to, if it said.
    pub fn last_server(&self) -> Option<&'a SegmentName> {
        self.last_server
    }

    /// `true` if the client last logged in to a server of another name: its session starts
    /// afresh (the old one's unconsumed messages stay in the old name's folder).
    pub fn new_session(&self) -> bool {
        self.last_server().is_some_and(|last| last != self.server)
    }

    /// How the client reached the server.
    pub fn transport(&self) -> LoginTransport {
        self.transport
    }

    /// A shared-memory client's pid (`SO_PEERCRED`); `None` over TCP.
    pub fn pid(&self) -> Option<u32> {
        match self.transport {
            LoginTransport::SharedMemory { pid, .. } => Some(pid),
            LoginTransport::Tcp { .. } => None,
        }
    }

    /// A shared-memory client's uid (`SO_PEERCRED`, already checked against the allow list);
    /// `None` over TCP.
    pub fn uid(&self) -> Option<u32> {
        match self.transport {
            LoginTransport::SharedMemory { uid, .. } => Some(uid),
            LoginTransport::Tcp { .. } => None,
        }
    }

    /// A TCP client's address; `None` on this host.
    pub fn peer(&self) -> Option<SocketAddr> {
        match self.transport {
            LoginTransport::Tcp { peer } => Some(peer),
            LoginTransport::SharedMemory { .. } => None,
        }
    }

    /// How many connections each group holds now (the index is the group).
    pub fn group_loads(&self) -> &'a [usize] {
        self.group_loads
    }

    /// The group with the fewest connections that has room, if any.
    pub fn least_loaded_group(&self) -> Option<usize> {
        self.group_loads
            .iter()
            .enumerate()
            .filter(|(_, load)| **load < self.per_group)
            .min_by_key(|(_, load)| **load)
            .map(|(group, _)| group)
    }
}

/// A login check's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admit the client into this group.
    Accept {
        /// The group's index.
        group: usize,
    },
    /// Refuse, with a reason the client receives as [`ClientError::Rejected`](crate::ClientError::Rejected).
    Reject(String),
}

/// The login check: called for each well-formed login from an admitted uid, on the thread that
/// calls `poll_control`.
pub type LoginCheck = Box<dyn FnMut(&LoginRequest<'_>) -> Decision + Send>;

/// Something the control thread did or saw, kept for [`Control::next_event`] (the last 1024).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A client logged in.
    LoggedIn {
        /// Its connection.
        id: ConnId,
        /// Its name.
        name: SegmentName,
        /// The group it went to.
        group: usize,
        /// Its pid.
        pid: u32,
        /// Its session was started afresh (it last knew another server name).
        new_session: bool,
    },
    /// A login was refused.
    Rejected {
        /// The name it gave, if it got that far.
        name: Option<SegmentName>,
        /// Why, as sent to the client.
        reason: String,
    },
    /// A connection closed (its session segment stays for the next login).
    Closed {
        /// The connection.
        id: ConnId,
        /// The client's name.
        name: SegmentName,
        /// Why.
        reason: CloseReason,
    },
    /// A connection moved between groups.
    Moved {
        /// The connection.
        id: ConnId,
        /// Its old group.
        from: usize,
        /// Its new group.
        to: usize,
    },
}

/// What the control thread counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlStats {
    /// Logins admitted.
    pub logins: u64,
    /// Logins refused (by the check, a limit, the uid check or a mismatch).
    pub rejected: u64,
    /// Login records that broke the protocol.
    pub garbage: u64,
    /// Clients that connected and sent no complete request within the login timeout, or hung
    /// up before finishing it.
    pub abandoned: u64,
    /// Connections closed.
    pub closed: u64,
    /// Connections moved between groups.
    pub moved: u64,
    /// Events dropped because nobody read [`Control::next_event`].
    pub events_dropped: u64,
}

struct Pending {
    stream: UnixStream,
    pid: u32,
    uid: u32,
    since: u64,
    buf: [u8; RECORD_LEN],
    filled: usize,
}

enum Entry {
    Free,
    /// Owned by `group` (or in its event ring on the way there).
    Live {
        name: SegmentName,
        group: usize,
        /// A shared-memory client's login socket; `None` for TCP.
        stream: Option<UnixStream>,
        /// 0 for TCP.
        pid: u32,
    },
    /// Asked back from `from` for a move to `to`; `close` set if it must close on arrival.
    Moving {
        name: SegmentName,
        from: usize,
        to: usize,
        stream: Option<UnixStream>,
        pid: u32,
        close: Option<CloseReason>,
    },
    /// Asked to close; the name stays taken until the group confirms.
    Closing {
        name: SegmentName,
        reason: CloseReason,
    },
}

impl Entry {
    fn name(&self) -> Option<&SegmentName> {
        match self {
            Self::Free => None,
            Self::Live { name, .. } | Self::Moving { name, .. } | Self::Closing { name, .. } => {
                Some(name)
            }
        }
    }
}

struct TcpSide {
    listener: LoginListener,
    options: ConnectionOptions,
}

struct Slot {
    generation: u32,
    entry: Entry,
}

type Conn<const C: usize> = Box<ServerConn<C>>;

/// The control half of a [`Server`](crate::Server): owns the login socket and the directory of
/// connections, and hands connections to the groups. Poll it with
/// [`poll_control`](Self::poll_control) from one thread (which may also poll groups).
pub struct Control<const C: usize> {
    config: ServerConfig,
    listener: UnixListener,
    _lock: OwnedFd,
    epoll: OwnedFd,
    pending: heapless::Vec<Box<Pending>, MAX_PENDING_LOGINS>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    to_groups: Vec<EventSender<ToGroup<Conn<C>>, EVENT_SLOTS>>,
    from_groups: Vec<EventReceiver<FromGroup<Conn<C>>, EVENT_SLOTS>>,
    /// Events a full ring refused, retried first.
    backlog: VecDeque<(usize, ToGroup<Conn<C>>)>,
    group_loads: Vec<usize>,
    counters: Vec<Arc<GroupCounters>>,
    check: LoginCheck,
    /// The epoll set reported a client waiting on the listener (level-triggered: reported again
    /// while more wait).
    listener_ready: bool,
    /// The TCP side, if configured: `shm-tcp`'s listener and the options its connections get.
    tcp: Option<TcpSide>,
    events: VecDeque<ServerEvent>,
    stats: ControlStats,
    own_uid: u32,
}

impl<const C: usize> core::fmt::Debug for Control<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Control")
            .field("name", &self.config.name)
            .field("folder", &self.config.folder)
            .field("group_loads", &self.group_loads)
            .finish_non_exhaustive()
    }
}

fn io_error<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> ServerError + 'p {
    move |source| ServerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Takes the folder's lock file, or says who has it.
fn lock_folder(folder: &Path) -> Result<OwnedFd, ServerError> {
    let path = folder.join("login.lock");
    let fd = rustix::fs::open(
        &path,
        OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|errno| io_error("opening the lock file", &path)(errno.into()))?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(fd),
        Err(Errno::WOULDBLOCK) => Err(ServerError::AlreadyRunning {
            folder: folder.to_path_buf(),
        }),
        Err(errno) => Err(io_error("locking", &path)(errno.into())),
    }
}

impl<const C: usize> Control<C> {
    #[allow(clippy::type_complexity)]
    pub(crate) fn new(
        config: ServerConfig,
        check: LoginCheck,
        to_groups: Vec<EventSender<ToGroup<Conn<C>>, EVENT_SLOTS>>,
        from_groups: Vec<EventReceiver<FromGroup<Conn<C>>, EVENT_SLOTS>>,
        counters: Vec<Arc<GroupCounters>>,
    ) -> Result<Self, ServerError> {
        let folder = config.folder.clone();
        std::fs::create_dir_all(&folder).map_err(io_error("creating the folder", &folder))?;
        let sessions = config.session_folder();
        std::fs::create_dir_all(&sessions)
            .map_err(io_error("creating the session folder", &sessions))?;
        let lock = lock_folder(&folder)?;
        // Under the lock, a socket file left here is a dead server's.
        let socket = socket_path(&folder);
        match std::fs::remove_file(&socket) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(io_error("removing the stale socket", &socket)(error));
            }
            _ => {}
        }
        let listener =
            UnixListener::bind(&socket).map_err(io_error("binding the login socket", &socket))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(config.socket_mode))
            .map_err(io_error("setting the mode of", &socket))?;
        listener
            .set_nonblocking(true)
            .map_err(io_error("making non-blocking", &socket))?;
        let tcp = match &config.tcp {
            Some(options) => Some(TcpSide {
                listener: LoginListener::bind(config.name.as_str(), config.name.as_str(), options)
                    .map_err(|source| ServerError::Tcp { source })?,
                options: options.connection().clone(),
            }),
            None => None,
        };
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|errno| io_error("creating an epoll set for", &socket)(errno.into()))?;
        epoll::add(
            &epoll,
            &listener,
            epoll::EventData::new_u64(LISTENER_KEY),
            epoll::EventFlags::IN,
        )
        .map_err(|errno| io_error("watching", &socket)(errno.into()))?;
        let capacity = config.groups * config.connections_per_group;
        let groups = config.groups;
        Ok(Self {
            listener,
            _lock: lock,
            epoll,
            pending: heapless::Vec::new(),
            slots: (0..capacity)
                .map(|_| Slot {
                    generation: 0,
                    entry: Entry::Free,
                })
                .collect(),
            free: (0..capacity as u32).rev().collect(),
            to_groups,
            from_groups,
            backlog: VecDeque::with_capacity(capacity),
            group_loads: vec![0; groups],
            counters,
            check,
            listener_ready: false,
            tcp,
            events: VecDeque::with_capacity(1024),
            stats: ControlStats::default(),
            own_uid: rustix::process::getuid().as_raw(),
            config,
        })
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The address TCP clients connect to, if the server serves them
    /// ([`ServerConfig::tcp`]).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().map(|tcp| tcp.listener.local_addr())
    }

    /// What the control thread counted.
    pub fn stats(&self) -> ControlStats {
        self.stats
    }

    /// A snapshot of group `group`'s counters (readable from the control thread while the
    /// group runs on another).
    pub fn group_stats(&self, group: usize) -> Option<GroupStats> {
        self.counters.get(group).map(|counters| counters.snapshot())
    }

    /// Connections per group, as control has assigned them (moves in flight count at their
    /// destination).
    pub fn group_loads(&self) -> &[usize] {
        &self.group_loads
    }

    /// Connections live now (logged in and not yet closed).
    pub fn connections(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The live connection of client `name`, with its group.
    pub fn find(&self, name: &str) -> Option<(ConnId, usize)> {
        self.slots
            .iter()
            .enumerate()
            .find_map(|(index, slot)| match &slot.entry {
                Entry::Live {
                    name: held, group, ..
                } if held.as_str() == name => Some((
                    ConnId {
                        slot: index as u32,
                        generation: slot.generation,
                    },
                    *group,
                )),
                _ => None,
            })
    }

    /// The oldest event not read yet.
    pub fn next_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    fn record(&mut self, event: ServerEvent) {
        if self.events.len() == self.events.capacity() {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    /// Moves connection `id` to group `to`: its group gives it back at its next poll and it
    /// joins `to` at control's next poll. Nothing is lost meanwhile: the client keeps queueing
    /// into its segment.
    ///
    /// # Errors
    /// [`MoveError`] if `id` is not live, `to` does not exist or is full, or `id` is already on
    /// the move.
    pub fn move_connection(&mut self, id: ConnId, to: usize) -> Result<(), MoveError> {
        let groups = self.group_loads.len();
        if to >= groups {
            return Err(MoveError::NoSuchGroup { group: to, groups });
        }
        let limit = self.config.connections_per_group;
        let slot = self
            .slots
            .get_mut(id.slot as usize)
            .filter(|slot| slot.generation == id.generation)
            .ok_or(MoveError::NoSuchConnection(id))?;
        let group = match &slot.entry {
            Entry::Live { group, .. } => *group,
            Entry::Free => return Err(MoveError::NoSuchConnection(id)),
            _ => return Err(MoveError::Busy(id)),
        };
        if group == to {
            return Ok(());
        }
        if self.group_loads[to] >= limit {
            return Err(MoveError::GroupFull { group: to, limit });
        }
        let Entry::Live {
            name, stream, pid, ..
        } = core::mem::replace(&mut slot.entry, Entry::Free)
        else {
            unreachable!("checked above")
        };
        slot.entry = Entry::Moving {
            name,
            from: group,
            to,
            stream,
            pid,
            close: None,
        };
        self.group_loads[group] -= 1;
        self.group_loads[to] += 1;
        self.send(group, ToGroup::Detach { id, to });
        Ok(())
    }

    /// Runs the control side once: takes what the groups sent back (closed and moved
    /// connections), notices closed login sockets (a client died or logged out), then accepts
    /// new clients on the login socket and answers complete logins (at most the configured
    /// number of each) and drops logins past their timeout. Returns the amount of work done (0
    /// when idle).
    ///
    /// `now` is [`shm_channel::monotonic_nanos`]. Cost when idle: one `epoll_wait` that returns
    /// at once (the login socket and every live client's are in its set), a load per group
    /// ring; with TCP on, the listener's `accept`. Call it once a millisecond or from its own
    /// thread: on every pass of a group's loop it would sit in front of every message. Logins
    /// allocate (opening a segment); the groups' hot path never does.
    pub fn poll_control(&mut self, now: u64) -> usize {
        let mut work = self.take_group_events();
        work += self.retry_backlog();
        // Deaths before logins: a client restarted after a crash logs in again under its name
        // at once, and its dead predecessor's socket closed before the new process even
        // started. Seen first, the old login is already closing and the new one gets "retry
        // later" (which `Client::connect` retries), not "already logged in from <dead pid>".
        work += self.watch_live();
        // `accept` only when the epoll set says a client waits: an `accept` that finds nobody
        // still costs the kernel a socket made and freed, microseconds on every idle poll.
        if self.listener_ready {
            self.listener_ready = false;
            work += self.accept_new(now);
        }
        work += self.read_pending(now);
        work += self.poll_tcp(now);
        work
    }

    fn send(&mut self, group: usize, event: ToGroup<Conn<C>>) {
        if !self.backlog.is_empty() {
            self.backlog.push_back((group, event));
            return;
        }
        if let Err(event) = self.to_groups[group].push(event) {
            self.backlog.push_back((group, event));
        }
    }

    fn retry_backlog(&mut self) -> usize {
        let mut sent = 0;
        while let Some((group, event)) = self.backlog.pop_front() {
            if let Err(event) = self.to_groups[group].push(event) {
                self.backlog.push_front((group, event));
                break;
            }
            sent += 1;
        }
        sent
    }

    fn take_group_events(&mut self) -> usize {
        let mut work = 0;
        for group in 0..self.from_groups.len() {
            while let Some(event) = self.from_groups[group].pop() {
                work += 1;
                match event {
                    FromGroup::Detached { id, conn, to } => self.arrive(id, conn, to),
                    FromGroup::Closed { id, reason } => self.closed(id, group, reason),
                }
            }
        }
        work
    }

    /// A connection given back for a move reaches control: forward it (or close it if its
    /// client went meanwhile).
    fn arrive(&mut self, id: ConnId, conn: Conn<C>, to: usize) {
        let slot = &mut self.slots[id.slot as usize];
        debug_assert_eq!(slot.generation, id.generation);
        match core::mem::replace(&mut slot.entry, Entry::Free) {
            Entry::Moving {
                name,
                from,
                stream,
                pid,
                close: None,
                ..
            } => {
                slot.entry = Entry::Live {
                    name,
                    group: to,
                    stream,
                    pid,
                };
                self.send(to, ToGroup::Attach { id, conn });
                self.stats.moved += 1;
                self.record(ServerEvent::Moved { id, from, to });
            }
            Entry::Moving {
                name,
                close: Some(reason),
                ..
            } => {
                drop(conn);
                self.group_loads[to] -= 1;
                self.free_slot(id, name, reason);
            }
            other => {
                debug_assert!(false, "a connection came back that was not moving");
                slot.entry = other;
            }
        }
    }

    /// A group dropped connection `id`.
    fn closed(&mut self, id: ConnId, group: usize, reason: CloseReason) {
        let slot = &mut self.slots[id.slot as usize];
        debug_assert_eq!(slot.generation, id.generation);
        match core::mem::replace(&mut slot.entry, Entry::Free) {
            // The group closed it on its own (timeout, corrupt ring): closing the socket tells
            // the client.
            Entry::Live { name, stream, .. } => {
                self.forget_socket(&stream);
                drop(stream);
                self.group_loads[group] -= 1;
                self.free_slot(id, name, reason);
            }
            Entry::Closing { name, reason, .. } => {
                self.group_loads[group] -= 1;
                self.free_slot(id, name, reason);
            }
            // Closed by its old group before the detach arrived: the move is moot.
            Entry::Moving {
                name, to, stream, ..
            } => {
                self.forget_socket(&stream);
                self.group_loads[to] -= 1;
                self.free_slot(id, name, reason);
            }
            Entry::Free => debug_assert!(false, "a free slot was closed"),
        }
    }

    fn free_slot(&mut self, id: ConnId, name: SegmentName, reason: CloseReason) {
        let slot = &mut self.slots[id.slot as usize];
        slot.entry = Entry::Free;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.slot);
        self.stats.closed += 1;
        self.record(ServerEvent::Closed { id, name, reason });
    }

    fn forget_socket(&self, stream: &Option<UnixStream>) {
        // Closing the descriptor would remove it from the set too; this keeps the set exact
        // even if the stream were shared.
        if let Some(stream) = stream {
            let _ = epoll::delete(&self.epoll, stream);
        }
    }

    fn accept_new(&mut self, now: u64) -> usize {
        let mut accepted = 0;
        while accepted < self.config.logins_per_poll {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break, // e.g. EMFILE: the client stays in the backlog until a close
            };
            accepted += 1;
            let Ok(credentials) = rustix::net::sockopt::socket_peercred(&stream) else {
                continue;
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let uid = credentials.uid.as_raw();
            let pending = Box::new(Pending {
                stream,
                pid: credentials.pid.as_raw_pid() as u32,
                uid,
                since: now,
                buf: [0; RECORD_LEN],
                filled: 0,
            });
            if let Err(mut pending) = self.pending.push(pending) {
                let reason = format!(
                    "{MAX_PENDING_LOGINS} logins are already in progress: try again shortly"
                );
                self.answer(
                    &mut pending.stream,
                    &Answer::RetryLater {
                        server: self.config.name.clone(),
                        reason,
                    },
                );
                self.stats.rejected += 1;
            }
        }
        accepted
    }

    fn read_pending(&mut self, now: u64) -> usize {
        let mut work = 0;
        let mut index = 0;
        while index < self.pending.len() {
            let pending = &mut self.pending[index];
            let outcome = loop {
                match pending.stream.read(&mut pending.buf[pending.filled..]) {
                    Ok(0) => break Some(false),
                    Ok(read) => {
                        pending.filled += read;
                        if pending.filled == RECORD_LEN {
                            break Some(true);
                        }
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        break if now.saturating_sub(pending.since) > self.config.login_timeout {
                            Some(false)
                        } else {
                            None
                        };
                    }
                    Err(_) => break Some(false),
                }
            };
            match outcome {
                None => index += 1,
                Some(complete) => {
                    let pending = self.pending.swap_remove(index);
                    work += 1;
                    if complete {
                        self.login(pending, now);
                    } else {
                        self.stats.abandoned += 1;
                    }
                    if work >= self.config.logins_per_poll {
                        break;
                    }
                }
            }
        }
        work
    }

    fn answer(&self, stream: &mut UnixStream, answer: &Answer) -> bool {
        // 432 bytes into a fresh socket's empty buffer: one write, whole or not at all.
        matches!(stream.write(&answer.encode()), Ok(RECORD_LEN))
    }

    fn reject(&mut self, mut pending: Box<Pending>, name: Option<SegmentName>, answer: Answer) {
        self.answer(&mut pending.stream, &answer);
        self.stats.rejected += 1;
        let reason = describe(&answer);
        self.record(ServerEvent::Rejected { name, reason });
    }

    fn rejected(&self, reason: String) -> Answer {
        Answer::Rejected {
            server: self.config.name.clone(),
            reason,
        }
    }

    /// The checks every login passes whatever its transport: no live login of this name, room
    /// in the server, the login check's verdict, room in the chosen group. Returns the group
    /// and whether the session starts afresh, or the answer to refuse with.
    #[allow(clippy::result_large_err)] // once per login, answered at once
    fn admit(
        &mut self,
        name: &SegmentName,
        last_server: Option<&SegmentName>,
        transport: LoginTransport,
    ) -> Result<(usize, bool), Answer> {
        if let Some(index) = self
            .slots
            .iter()
            .position(|slot| slot.entry.name() == Some(name))
        {
            let slot = &self.slots[index];
            // A TCP client that logs in again while its old link is still held by its group
            // (the group notices a dead link only at its next read or timeout): the new login
            // is the truth, so the old connection is closed and the client, told to retry,
            // comes back to a free name a moment later (shm-tcp clients retry by themselves).
            let old_tcp = matches!(slot.entry, Entry::Live { stream: None, .. });
            if old_tcp && matches!(transport, LoginTransport::Tcp { .. }) {
                self.begin_close(index, CloseReason::ClientGone);
                return Err(Answer::RetryLater {
                    server: self.config.name.clone(),
                    reason: format!(
                        "{name} logged in again: its previous TCP connection is being closed; retry"
                    ),
                });
            }
            // The holder may have died a moment ago: its login socket is closed, but epoll has
            // not reported it yet (seen on Linux 6.18: a client restarted right after a
            // `SIGKILL` logged in before `watch_live` was told its predecessor's socket closed,
            // though a read of that socket already gave EOF). Look at the socket itself, so a
            // dead holder means "retry later", never "already logged in from <dead pid>".
            if let Entry::Live {
                stream: Some(stream),
                ..
            } = &mut self.slots[index].entry
            {
                if let Some(reason) = read_live(stream) {
                    self.begin_close(index, reason);
                }
            }
            let slot = &self.slots[index];
            return Err(match &slot.entry {
                Entry::Live { pid, .. } | Entry::Moving { pid, .. } => Answer::AlreadyLoggedIn {
                    server: self.config.name.clone(),
                    holder_pid: *pid,
                },
                _ => Answer::RetryLater {
                    server: self.config.name.clone(),
                    reason: format!("the previous connection of {name} is still closing"),
                },
            });
        }
        if self.free.is_empty() {
            return Err(self.rejected(format!(
                "the server is full: {} connections of {} allowed",
                self.slots.len(),
                self.slots.len()
            )));
        }
        let request = LoginRequest {
            name,
            last_server,
            transport,
            server: &self.config.name,
            group_loads: &self.group_loads,
            per_group: self.config.connections_per_group,
        };
        let new_session = request.new_session();
        let group = match (self.check)(&request) {
            Decision::Accept { group } => group,
            Decision::Reject(reason) => return Err(self.rejected(reason)),
        };
        if group >= self.group_loads.len() {
            return Err(self.rejected(format!(
                "the login check chose group {group}, but the server has {}",
                self.group_loads.len()
            )));
        }
        if self.group_loads[group] >= self.config.connections_per_group {
            return Err(self.rejected(format!(
                "group {group} is full ({} connections)",
                self.config.connections_per_group
            )));
        }
        Ok((group, new_session))
    }

    /// Puts an admitted connection in the directory and sends it to its group. `stream` is a
    /// shared-memory client's login socket (watched for its death); a TCP connection's link is
    /// watched by its group. Returns `false` if the socket cannot be watched (nothing installed).
    #[allow(clippy::too_many_arguments)]
    fn install(
        &mut self,
        name: SegmentName,
        group: usize,
        pid: u32,
        stream: Option<UnixStream>,
        transport: Transport<C>,
        new_session: bool,
    ) -> bool {
        let Some(free) = self.free.pop() else {
            return false; // `admit` checked; unreachable in practice
        };
        if let Some(stream) = &stream {
            if epoll::add(
                &self.epoll,
                stream,
                epoll::EventData::new_u64(u64::from(free)),
                epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
            )
            .is_err()
            {
                // Without a watch its death would go unseen: refuse rather than admit blind.
                self.free.push(free);
                self.stats.abandoned += 1;
                return false;
            }
        }
        let slot = &mut self.slots[free as usize];
        let id = ConnId {
            slot: free,
            generation: slot.generation,
        };
        slot.entry = Entry::Live {
            name: name.clone(),
            group,
            stream,
            pid,
        };
        self.group_loads[group] += 1;
        self.stats.logins += 1;
        let conn = Box::new(ServerConn {
            name: name.clone(),
            transport,
            since_link_poll: 0,
            stats: Default::default(),
            since: 0,
        });
        self.send(group, ToGroup::Attach { id, conn });
        self.record(ServerEvent::LoggedIn {
            id,
            name,
            group,
            pid,
            new_session,
        });
        true
    }

    /// Answers one complete login record from the Unix socket.
    fn login(&mut self, mut pending: Box<Pending>, now: u64) {
        let hello = match ClientRecord::decode(&pending.buf) {
            Ok(ClientRecord::Login(hello)) => hello,
            Ok(ClientRecord::Logout) => {
                // Nothing to log out of on a fresh socket: a confused client.
                self.stats.garbage += 1;
                let answer = self.rejected("a logout before any login".into());
                return self.reject(pending, None, answer);
            }
            Err(error) => {
                self.stats.garbage += 1;
                let answer = self.rejected(format!("bad login record: {error}"));
                return self.reject(pending, None, answer);
            }
        };
        let name = hello.name.clone();
        if pending.uid != self.own_uid && !self.config.allowed_uids.contains(&pending.uid) {
            let answer = self.rejected(format!(
                "uid {} may not log in: the server runs as uid {} and allows {:?}",
                pending.uid, self.own_uid, self.config.allowed_uids
            ));
            return self.reject(pending, Some(name), answer);
        }
        if hello.capacity != C as u64 {
            let answer = Answer::CapacityMismatch {
                server: self.config.name.clone(),
                server_capacity: C as u64,
            };
            return self.reject(pending, Some(name), answer);
        }
        let transport = LoginTransport::SharedMemory {
            pid: pending.pid,
            uid: pending.uid,
        };
        let (group, new_session) = match self.admit(&name, hello.last_server.as_ref(), transport) {
            Ok(admitted) => admitted,
            Err(answer) => return self.reject(pending, Some(name), answer),
        };
        let endpoint = match ChannelOptions::new()
            .dir(self.config.session_folder())
            .mode(self.config.segment_mode)
            .end_names(self.config.name.as_str(), name.as_str())
            .map_err(shm_channel::ChannelError::from)
            .and_then(|options| Channel::<C>::create_or_open(name.as_str(), End::A, &options))
        {
            Ok(endpoint) => endpoint,
            Err(error) => {
                let answer = self.rejected(format!("the server cannot open the session: {error}"));
                return self.reject(pending, Some(name), answer);
            }
        };
        // The server's heartbeat in the session may be a previous server's, as old as the
        // outage: renew it before the client resumes judging it. The group's first heartbeat
        // comes up to an interval after the attach, and a client whose server timeout is
        // shorter than the outage would otherwise drop the fresh login at once.
        endpoint.heartbeat(now);
        let accepted = Answer::Accepted {
            server: self.config.name.clone(),
            group: group as u32,
        };
        if !self.answer(&mut pending.stream, &accepted) {
            self.stats.abandoned += 1;
            return; // the client left; its session stays for the next login
        }
        let Pending { stream, pid, .. } = *pending;
        self.install(
            name,
            group,
            pid,
            Some(stream),
            Transport::Shm(endpoint),
            new_session,
        );
    }

    /// Takes the TCP listener's completed hellos (at most the configured number) through the
    /// same admission as shared-memory logins.
    fn poll_tcp(&mut self, now: u64) -> usize {
        let mut work = 0;
        while work < self.config.logins_per_poll {
            let Some(tcp) = &mut self.tcp else { break };
            let Some(event) = tcp.listener.poll(now) else {
                break;
            };
            work += 1;
            let login = match event {
                ListenerEvent::Login(login) => login,
                ListenerEvent::Failed { .. } => {
                    self.stats.garbage += 1;
                    continue;
                }
                _ => continue,
            };
            let name = login.client_name().clone();
            let transport = LoginTransport::Tcp { peer: login.peer() };
            let last_server = login.session().cloned();
            let refusal = match self.admit(&name, last_server.as_ref(), transport) {
                Ok((group, new_session)) => {
                    let Some(tcp) = &self.tcp else { break };
                    match shm_tcp::Connection::<C>::from_login(login, &tcp.options, now) {
                        Ok((conn, _moved_aside)) => {
                            self.install(name, group, 0, None, Transport::Tcp(conn), new_session);
                            continue;
                        }
                        Err(error) => {
                            // `from_login` refused the client with the error's text.
                            self.stats.rejected += 1;
                            self.record(ServerEvent::Rejected {
                                name: Some(name),
                                reason: error.to_string(),
                            });
                            continue;
                        }
                    }
                }
                Err(answer) => answer,
            };
            let reason = describe(&refusal);
            let _ = login.reject(&reason);
            self.stats.rejected += 1;
            self.record(ServerEvent::Rejected {
                name: Some(name),
                reason,
            });
        }
        work
    }

    /// Notices live login sockets that closed (or carried a logout).
    fn watch_live(&mut self) -> usize {
        // On the stack, not a field: `epoll::Event` holds a pointer-typed union, which is not
        // `Send`, and a field of it made `Control` not `Send` (so not movable to its thread).
        let mut ready = [const { core::mem::MaybeUninit::<epoll::Event>::uninit() }; EPOLL_BATCH];
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let Ok((ready, _)) = epoll::wait(&self.epoll, &mut ready, Some(&zero)) else {
            return 0;
        };
        let mut work = 0;
        for event in ready.iter() {
            if event.data.u64() == LISTENER_KEY {
                self.listener_ready = true;
                continue;
            }
            let slot = event.data.u64() as usize;
            work += 1;
            let reason = {
                let stream = match &mut self.slots[slot].entry {
                    Entry::Live {
                        stream: Some(stream),
                        ..
                    }
                    | Entry::Moving {
                        stream: Some(stream),
                        ..
                    } => stream,
                    _ => continue,
                };
                match read_live(stream) {
                    Some(reason) => reason,
                    None => continue,
                }
            };
            self.begin_close(slot, reason);
        }
        work
    }

    fn begin_close(&mut self, slot_index: usize, reason: CloseReason) {
        let slot = &mut self.slots[slot_index];
        let id = ConnId {
            slot: slot_index as u32,
            generation: slot.generation,
        };
        match core::mem::replace(&mut slot.entry, Entry::Free) {
            Entry::Live {
                name,
                group,
                stream,
                ..
            } => {
                if let Some(stream) = &stream {
                    let _ = epoll::delete(&self.epoll, stream);
                }
                drop(stream);
                slot.entry = Entry::Closing { name, reason };
                self.send(group, ToGroup::Close { id, reason });
            }
            Entry::Moving {
                name,
                from,
                to,
                stream,
                pid,
                ..
            } => {
                if let Some(stream) = &stream {
                    let _ = epoll::delete(&self.epoll, stream);
                }
                slot.entry = Entry::Moving {
                    name,
                    from,
                    to,
                    stream,
                    pid,
                    close: Some(reason),
                };
            }
            other => slot.entry = other,
        }
    }
}

/// Reads what a live login socket holds: `None` if nothing (the client lives on), else why the
/// connection ends (EOF: the client died or closed it; a logout; anything else breaks the
/// protocol).
fn read_live(stream: &mut UnixStream) -> Option<CloseReason> {
    let mut record = [0u8; RECORD_LEN];
    match stream.read(&mut record) {
        Ok(0) => Some(CloseReason::ClientGone),
        Ok(RECORD_LEN) if ClientRecord::decode(&record) == Ok(ClientRecord::Logout) => {
            Some(CloseReason::Logout)
        }
        Ok(_) => Some(CloseReason::Protocol),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => None,
        Err(error) if error.kind() == io::ErrorKind::Interrupted => None,
        Err(_) => Some(CloseReason::ClientGone),
    }
}

impl<const C: usize> Drop for Control<C> {
    fn drop(&mut self) {
        // Only this server (holding the lock) bound the socket: remove it so clients see
        // "no server" rather than a refused connect. The lock goes with the descriptor.
        let _ = std::fs::remove_file(self.config.socket_path());
    }
}

/// A refusal in words (for events, and for TCP clients, which receive it as their reason).
fn describe(answer: &Answer) -> String {
    match answer {
        Answer::Rejected { reason, .. } | Answer::RetryLater { reason, .. } => reason.clone(),
        Answer::CapacityMismatch {
            server_capacity, ..
        } => format!("capacity mismatch: the server's is {server_capacity}"),
        Answer::AlreadyLoggedIn { holder_pid, .. } => {
            format!("already logged in from pid {holder_pid}")
        }
        Answer::Accepted { .. } => String::new(),
    }
}
