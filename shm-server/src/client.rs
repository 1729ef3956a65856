//! `Client`: logs in to a server over its folder's Unix socket and talks over the session's
//! shared-memory channel, coming back after a restart of either side with nothing lost.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shm_channel::{
    monotonic_nanos, Channel, ChannelError, ChannelOptions, ChannelSlot, End, Endpoint, SegmentName,
};
use spsc_core::{Message, MessageReceiver, MessageSender, RecvError, SendError};

use crate::config::socket_path;
use crate::error::ClientError;
use crate::wire::{Answer, ClientRecord, LoginHello, RECORD_LEN};

/// How a [`Client`] logs in and watches its server.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    login_timeout: Duration,
    heartbeat_interval: u64,
    server_timeout: u64,
    retry_min: u64,
    retry_max: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self::new()
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl ClientOptions {
    /// Defaults: 1 s for the first login (waiting for a server that is not up yet included),
    /// a heartbeat every 100 ms, a server silent for 1 s treated as gone, reconnects after 10 ms
    /// doubling to 1 s.
    pub fn new() -> Self {
        Self {
            login_timeout: Duration::from_secs(1),
            heartbeat_interval: 100_000_000,
            server_timeout: 1_000_000_000,
            retry_min: 10_000_000,
            retry_max: 1_000_000_000,
        }
    }

    /// How long [`Client::connect`] may block (waiting for the socket to appear, for a
    /// "retry later" to clear, and for the answer); also the limit on each reconnect's answer.
    pub fn login_timeout(mut self, timeout: Duration) -> Self {
        self.login_timeout = timeout;
        self
    }

    /// How often [`Client::poll`] writes the client's heartbeat (and checks the login socket).
    /// Keep it well under the server's heartbeat timeout.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = nanos(interval).max(1);
        self
    }

    /// How long the server may write no heartbeat before the client drops the login and
    /// reconnects (a hung server; a dead one is seen at once by its socket).
    pub fn server_timeout(mut self, timeout: Duration) -> Self {
        self.server_timeout = nanos(timeout);
        self
    }

    /// The first and the longest wait between reconnect attempts (doubling in between).
    pub fn retry(mut self, first: Duration, longest: Duration) -> Self {
        self.retry_min = nanos(first).max(1);
        self.retry_max = nanos(longest).max(self.retry_min);
        self
    }
}

/// What [`Client::poll`] noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The login was lost (server died, closed the connection, or went silent); the client
    /// reconnects by itself. Messages pushed meanwhile wait in the session's ring.
    Disconnected {
        /// Why, in words.
        reason: String,
    },
    /// Logged in again.
    Reconnected {
        /// The server's name now.
        server: SegmentName,
        /// The server has a new name, so the session started afresh: the old session's segment
        /// (and whatever neither side had consumed in it) was removed.
        new_session: bool,
    },
}

enum Link {
    Connected(UnixStream),
    /// Waiting to try again at `at`.
    Idle {
        at: u64,
        backoff: u64,
    },
    /// Login sent; reading the answer.
    Answering {
        stream: UnixStream,
        buf: Box<[u8; RECORD_LEN]>,
        filled: usize,
        since: u64,
        backoff: u64,
    },
}

/// A client of a [`Server`](crate::Server) on the same host: a [`MessageSender`] and
/// [`MessageReceiver`] over its session's shared-memory channel, plus [`poll`](Self::poll) for
/// heartbeats and reconnects.
///
/// The session is the name pair (client, server): logging in again with the same pair, after a
/// crash of either side, re-attaches to the same segment with every unconsumed message. Sending
/// and receiving work while the server is away (messages wait in the ring); a server restarted
/// under a new name starts the session afresh.
pub struct Client<const C: usize> {
    folder: PathBuf,
    socket: PathBuf,
    name: SegmentName,
    options: ClientOptions,
    server: SegmentName,
    group: u32,
    endpoint: Endpoint<C>,
    link: Link,
    next_check: u64,
}

impl<const C: usize> core::fmt::Debug for Client<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("group", &self.group)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// Sends a login for `name` and returns the stream (blocking, with `timeout` on the answer).
fn send_login<const C: usize>(
    socket: &Path,
    name: &SegmentName,
    last_server: Option<&SegmentName>,
) -> Result<UnixStream, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::ServerGone {
        socket: socket.to_path_buf(),
        source,
    })?;
    let record = ClientRecord::Login(LoginHello {
        name: name.clone(),
        last_server: last_server.cloned(),
        capacity: C as u64,
    });
    stream
        .write_all(&record.encode())
        .map_err(|source| ClientError::ServerGone {
            socket: socket.to_path_buf(),
            source,
        })?;
    Ok(stream)
}

/// The session segment's options for server `server` in `folder`.
fn session_options(folder: &Path, server: &SegmentName) -> ChannelOptions {
    ChannelOptions::new().dir(folder.join(server.as_str()))
}

/// An answer turned into the client's error, or the accepted (server, group).
fn accepted(answer: Answer, name: &SegmentName) -> Result<(SegmentName, u32), ClientError> {
    match answer {
        Answer::Accepted { server, group } => Ok((server, group)),
        Answer::Rejected { server, reason } => Err(ClientError::Rejected {
            server: server.as_str().into(),
            reason,
        }),
        Answer::RetryLater { server, reason } => Err(ClientError::RetryLater {
            server: server.as_str().into(),
            reason,
        }),
        Answer::CapacityMismatch {
            server_capacity, ..
        } => Err(ClientError::CapacityMismatch {
            client: 0, // filled in by the caller, which knows C
            server: server_capacity,
        }),
        Answer::AlreadyLoggedIn { holder_pid, .. } => Err(ClientError::AlreadyLoggedIn {
            name: name.as_str().into(),
            holder_pid,
        }),
    }
}

impl<const C: usize> Client<C> {
    /// Logs in as `name` to the server serving `folder` (its `login.sock`), and opens the
    /// session's channel. Blocks up to the options' login timeout: it waits for a server that
    /// is not listening yet and retries a "retry later" answer (the previous login of this name
    /// still closing) until then.
    ///
    /// # Errors
    /// [`ClientError::Rejected`] (with the server's reason), [`ClientError::AlreadyLoggedIn`],
    /// [`ClientError::CapacityMismatch`], [`ClientError::ServerGone`] (no server by the
    /// deadline), [`ClientError::Timeout`], [`ClientError::Protocol`], [`ClientError::Channel`]
    /// if the session's segment cannot be opened (e.g. another live process holds this end).
    pub fn connect(
        folder: impl AsRef<Path>,
        name: &str,
        options: &ClientOptions,
    ) -> Result<Self, ClientError> {
        let folder = folder.as_ref().to_path_buf();
        let socket = socket_path(&folder);
        let name = SegmentName::new(name).map_err(|error| ClientError::Rejected {
            server: String::new(),
            reason: format!("invalid client name: {error}"),
        })?;
        let deadline = Instant::now() + options.login_timeout;
        loop {
            let attempt = Self::login_blocking(&socket, &name, deadline);
            let retry = matches!(
                &attempt,
                Err(ClientError::ServerGone { .. } | ClientError::RetryLater { .. })
            );
            if retry && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let (stream, server, group) = attempt?;
            let endpoint =
                Channel::<C>::open(name.as_str(), End::B, &session_options(&folder, &server))
                    .map_err(ClientError::Channel)?;
            let now = monotonic_nanos();
            endpoint.heartbeat(now);
            stream
                .set_nonblocking(true)
                .map_err(|source| ClientError::Io {
                    what: "making non-blocking",
                    socket: socket.clone(),
                    source,
                })?;
            return Ok(Self {
                folder,
                socket,
                name,
                options: options.clone(),
                server,
                group,
                endpoint,
                link: Link::Connected(stream),
                next_check: now,
            });
        }
    }

    fn login_blocking(
        socket: &Path,
        name: &SegmentName,
        deadline: Instant,
    ) -> Result<(UnixStream, SegmentName, u32), ClientError> {
        let mut stream = send_login::<C>(socket, name, None)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let millis = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|source| ClientError::Io {
                what: "setting a read timeout on",
                socket: socket.to_path_buf(),
                source,
            })?;
        let mut buf = [0u8; RECORD_LEN];
        if let Err(error) = stream.read_exact(&mut buf) {
            return Err(match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                    socket: socket.to_path_buf(),
                    millis,
                },
                _ => ClientError::ServerGone {
                    socket: socket.to_path_buf(),
                    source: error,
                },
            });
        }
        let answer = Answer::decode(&buf).map_err(|error| ClientError::Protocol {
            socket: socket.to_path_buf(),
            error,
        })?;
        match accepted(answer, name) {
            Ok((server, group)) => Ok((stream, server, group)),
            Err(ClientError::CapacityMismatch { server, .. }) => {
                Err(ClientError::CapacityMismatch {
                    client: C as u64,
                    server,
                })
            }
            Err(error) => Err(error),
        }
    }

    /// The client's name.
    pub fn name(&self) -> &SegmentName {
        &self.name
    }

    /// The server's name at the last login.
    pub fn server(&self) -> &SegmentName {
        &self.server
    }

    /// The group the server put this client in at the last login.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// `true` while logged in (the login socket is open).
    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Connected(_))
    }

    /// The session's channel endpoint (counters, heartbeats, the header).
    pub fn endpoint(&mut self) -> &mut Endpoint<C> {
        &mut self.endpoint
    }

    /// Keeps the login alive: once per heartbeat interval (by `now`, which is
    /// [`monotonic_nanos`]) it writes the client's heartbeat and checks the login socket and
    /// the server's heartbeat; when the login was lost it reconnects with back-off, without
    /// blocking. Call it from the thread that uses the client, as often as convenient (between
    /// intervals it costs one comparison).
    ///
    /// # Errors
    /// A refusal on a reconnect ([`ClientError::Rejected`], [`ClientError::RetryLater`],
    /// [`ClientError::AlreadyLoggedIn`],
    /// [`ClientError::CapacityMismatch`], [`ClientError::Protocol`], [`ClientError::Channel`]):
    /// the client keeps trying at its back-off; the error says why it is not back yet.
    pub fn poll(&mut self, now: u64) -> Result<Option<ClientEvent>, ClientError> {
        if matches!(self.link, Link::Connected(_)) && now < self.next_check {
            return Ok(None);
        }
        match &mut self.link {
            Link::Connected(stream) => {
                self.next_check = now.saturating_add(self.options.heartbeat_interval);
                self.endpoint.heartbeat(now);
                let mut byte = [0u8; 1];
                let lost = match stream.read(&mut byte) {
                    Ok(0) => Some("the server closed the login socket".to_string()),
                    Ok(_) => Some("the server sent data on a quiet login socket".to_string()),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => None,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => None,
                    Err(error) => Some(format!("the login socket failed: {error}")),
                };
                let lost = lost.or_else(|| {
                    let age = self.endpoint.peer_heartbeat_age(now)?;
                    (age > self.options.server_timeout).then(|| {
                        format!("the server wrote no heartbeat for {} ms", age / 1_000_000)
                    })
                });
                match lost {
                    Some(reason) => {
                        self.link = Link::Idle {
                            at: now,
                            backoff: self.options.retry_min,
                        };
                        Ok(Some(ClientEvent::Disconnected { reason }))
                    }
                    None => Ok(None),
                }
            }
            Link::Idle { at, backoff } => {
                if now < *at {
                    return Ok(None);
                }
                let backoff = *backoff;
                self.endpoint.heartbeat(now);
                match send_login::<C>(&self.socket, &self.name, Some(&self.server)) {
                    Ok(stream) => {
                        if let Err(source) = stream.set_nonblocking(true) {
                            self.retry_later(now, backoff);
                            return Err(ClientError::Io {
                                what: "making non-blocking",
                                socket: self.socket.clone(),
                                source,
                            });
                        }
                        self.link = Link::Answering {
                            stream,
                            buf: Box::new([0; RECORD_LEN]),
                            filled: 0,
                            since: now,
                            backoff,
                        };
                        Ok(None)
                    }
                    Err(_) => {
                        // No server yet: quietly try again later.
                        self.retry_later(now, backoff);
                        Ok(None)
                    }
                }
            }
            Link::Answering {
                stream,
                buf,
                filled,
                since,
                backoff,
            } => {
                let backoff = *backoff;
                loop {
                    match stream.read(&mut buf[*filled..]) {
                        Ok(0) => {
                            self.retry_later(now, backoff);
                            return Ok(None);
                        }
                        Ok(read) => {
                            *filled += read;
                            if *filled == RECORD_LEN {
                                break;
                            }
                        }
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                            if now.saturating_sub(*since) > nanos(self.options.login_timeout) {
                                self.retry_later(now, backoff);
                            }
                            return Ok(None);
                        }
                        Err(_) => {
                            self.retry_later(now, backoff);
                            return Ok(None);
                        }
                    }
                }
                let answer = match Answer::decode(buf) {
                    Ok(answer) => answer,
                    Err(error) => {
                        self.retry_later(now, backoff);
                        return Err(ClientError::Protocol {
                            socket: self.socket.clone(),
                            error,
                        });
                    }
                };
                let Link::Answering { stream, .. } =
                    core::mem::replace(&mut self.link, Link::Idle { at: now, backoff })
                else {
                    unreachable!("matched above")
                };
                match accepted(answer, &self.name) {
                    Ok((server, group)) => self.rejoin(stream, server, group, now),
                    Err(error) => {
                        self.retry_later(now, backoff);
                        Err(match error {
                            ClientError::CapacityMismatch { server, .. } => {
                                ClientError::CapacityMismatch {
                                    client: C as u64,
                                    server,
                                }
                            }
                            other => other,
                        })
                    }
                }
            }
        }
    }

    fn retry_later(&mut self, now: u64, backoff: u64) {
        self.link = Link::Idle {
            at: now.saturating_add(backoff),
            backoff: backoff.saturating_mul(2).min(self.options.retry_max),
        };
    }

    /// Logged in again: keep the segment (same server name) or switch to the new session's.
    fn rejoin(
        &mut self,
        stream: UnixStream,
        server: SegmentName,
        group: u32,
        now: u64,
    ) -> Result<Option<ClientEvent>, ClientError> {
        let new_session = server != self.server;
        if new_session {
            let endpoint = match Channel::<C>::open(
                self.name.as_str(),
                End::B,
                &session_options(&self.folder, &server),
            ) {
                Ok(endpoint) => endpoint,
                Err(error) => {
                    self.retry_later(now, self.options.retry_min);
                    return Err(ClientError::Channel(error));
                }
            };
            let old = core::mem::replace(&mut self.endpoint, endpoint);
            // The old session is over: its server is gone under its old name.
            let _ = old.close_and_remove_if_last();
            self.server = server.clone();
        }
        self.endpoint.heartbeat(now);
        self.group = group;
        self.link = Link::Connected(stream);
        self.next_check = now.saturating_add(self.options.heartbeat_interval);
        Ok(Some(ClientEvent::Reconnected {
            server,
            new_session,
        }))
    }

    /// Logs out: tells the server, which closes the connection at once (rather than on the
    /// socket's end). The session's segment and its unconsumed messages stay for the next
    /// login.
    pub fn logout(mut self) {
        if let Link::Connected(stream) = &mut self.link {
            let _ = stream.write_all(&ClientRecord::Logout.encode());
        }
    }
}

impl<const C: usize> MessageSender for Client<C> {
    type Slot<'s>
        = ChannelSlot<'s, C>
    where
        Self: 's;

    /// As the channel's [`Sender`](shm_channel::Sender): works while disconnected (the message
    /// waits in the session's ring).
    #[inline]
    fn alloc(&mut self, len: u32, tag: u16) -> Result<ChannelSlot<'_, C>, SendError> {
        self.endpoint.sender().alloc(len, tag)
    }

    fn max_payload(&self) -> u32 {
        spsc_core::MessageRing::<C>::MAX_PAYLOAD
    }
}

impl<const C: usize> MessageReceiver for Client<C> {
    #[inline]
    fn front(&mut self) -> Result<Message<'_>, RecvError> {
        self.endpoint.receiver().front()
    }

    #[inline]
    fn pop(&mut self) -> Result<(), RecvError> {
        self.endpoint.receiver().pop()
    }
}

impl From<ChannelError> for ClientError {
    fn from(error: ChannelError) -> Self {
        Self::Channel(error)
    }
}
