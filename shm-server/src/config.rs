//! The server's configuration: its name, folder, groups, limits and timeouts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shm_channel::{NameError, SegmentName};

/// Most uids an allow list holds besides the server's own.
pub const MAX_ALLOWED_UIDS: usize = 16;
/// Most logins waiting for their request at once; more connects wait in the socket's backlog.
pub const MAX_PENDING_LOGINS: usize = 64;

/// How a [`Server`](crate::Server) is set up. Every limit is fixed at [`Server::new`](crate::Server::new):
/// its tables are allocated once, then never grow.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub(crate) name: SegmentName,
    pub(crate) folder: PathBuf,
    pub(crate) groups: usize,
    pub(crate) connections_per_group: usize,
    pub(crate) heartbeat_interval: u64,
    pub(crate) heartbeat_timeout: u64,
    pub(crate) login_timeout: u64,
    pub(crate) logins_per_poll: usize,
    pub(crate) budget: u32,
    pub(crate) allowed_uids: heapless::Vec<u32, MAX_ALLOWED_UIDS>,
    pub(crate) socket_mode: u32,
    pub(crate) segment_mode: u32,
    pub(crate) tcp: Option<shm_tcp::AcceptorOptions>,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl ServerConfig {
    /// A server named `name` (the session name: a server started under a new name starts every
    /// client's session afresh) in `folder`, which holds its login socket `login.sock` and one
    /// sub-folder of session segments per server name. Defaults: 1 group of 64 connections,
    /// heartbeats every 100 ms, a peer silent for 1 s timed out, 1 s to send a login, 16 logins
    /// handled per [`poll_control`](crate::Control::poll_control), a budget of 32 messages per
    /// connection per poll round, only the server's own uid admitted, the socket `0600`.
    ///
    /// # Errors
    /// [`NameError`] if `name` is not a valid segment name.
    pub fn new(name: &str, folder: impl Into<PathBuf>) -> Result<Self, NameError> {
        Ok(Self {
            name: SegmentName::new(name)?,
            folder: folder.into(),
            groups: 1,
            connections_per_group: 64,
            heartbeat_interval: 100_000_000,
            heartbeat_timeout: 1_000_000_000,
            login_timeout: 1_000_000_000,
            logins_per_poll: 16,
            budget: 32,
            allowed_uids: heapless::Vec::new(),
            socket_mode: 0o600,
            tcp: None,
            segment_mode: 0o600,
        })
    }

    /// The number of groups (each polled by [`poll_group`](crate::Server::poll_group), on a
    /// thread of the user's choice) and the connections each holds (1 to 1024). The server
    /// admits at most `groups * per_group` connections; the next login is refused with a reason.
    pub fn groups(mut self, groups: usize, per_group: usize) -> Self {
        self.groups = groups;
        self.connections_per_group = per_group;
        self
    }

    /// How often a group writes its heartbeat into each session segment.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = nanos(interval);
        self
    }

    /// How long a client may stay silent (no heartbeat, e.g. stopped with `SIGSTOP`) before its
    /// group closes the connection. A dead client is noticed at once by its login socket.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = nanos(timeout);
        self
    }

    /// How long a client that connected to the login socket may take to send its request.
    pub fn login_timeout(mut self, timeout: Duration) -> Self {
        self.login_timeout = nanos(timeout);
        self
    }

    /// The most logins (connects read, requests answered) one `poll_control` handles.
    pub fn logins_per_poll(mut self, count: usize) -> Self {
        self.logins_per_poll = count.max(1);
        self
    }

    /// The most messages a group hands its handler from one connection per poll round, so a
    /// client flooding its channel never starves the others of its group.
    pub fn budget(mut self, messages: u32) -> Self {
        self.budget = messages.max(1);
        self
    }

    /// Admits clients running as `uid` besides the server's own (at most
    /// [`MAX_ALLOWED_UIDS`]; more are ignored). The socket's mode must let them connect too
    /// (see [`socket_mode`](Self::socket_mode)), and the session segments' mode must let them
    /// open their segment (see [`segment_mode`](Self::segment_mode)).
    pub fn allow_uid(mut self, uid: u32) -> Self {
        let _ = self.allowed_uids.push(uid);
        self
    }

    /// The login socket's permission bits (default `0600`: only the server's uid can even
    /// connect; the `SO_PEERCRED` check applies on top).
    pub fn socket_mode(mut self, mode: u32) -> Self {
        self.socket_mode = mode;
        self
    }

    /// The permission bits of the session segments the server creates (default `0600`: only
    /// the server's uid can open them, so a client of another uid admitted by
    /// [`allow_uid`](Self::allow_uid) is refused by the file system when it opens its segment).
    /// E.g. `0660` with the server and its clients sharing a group, or `0666`. Applies when a
    /// segment is created: a session segment left by an earlier run keeps its mode.
    pub fn segment_mode(mut self, mode: u32) -> Self {
        self.segment_mode = mode;
        self
    }

    /// Also serves TCP clients (`shm-tcp` connections, made with
    /// [`shm_tcp::Connection::connect`] to this server's name), listening as `options` say
    /// (loopback unless set otherwise). They log in through the same check into the same groups
    /// and reach the same handler; their session is the server's name (a new name starts each
    /// pair afresh), their persisted queues live in `options`' connection folder. A TCP
    /// client's death or silence is seen by its group (the link's own timeout), not by a login
    /// socket.
    pub fn tcp(mut self, options: shm_tcp::AcceptorOptions) -> Self {
        self.tcp = Some(options);
        self
    }

    /// The server's (session) name.
    pub fn name(&self) -> &SegmentName {
        &self.name
    }

    /// The folder holding the login socket and the sessions.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The login socket's path: `<folder>/login.sock`.
    pub fn socket_path(&self) -> PathBuf {
        socket_path(&self.folder)
    }

    /// The folder of this server name's session segments: `<folder>/<name>`.
    pub fn session_folder(&self) -> PathBuf {
        self.folder.join(self.name.as_str())
    }

    /// The limits checked by `Server::new`.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.groups == 0 || self.groups > 256 {
            return Err(format!(
                "{} groups configured; 1 to 256 are allowed",
                self.groups
            ));
        }
        if self.connections_per_group == 0 || self.connections_per_group > 1024 {
            return Err(format!(
                "{} connections per group configured; 1 to 1024 are allowed",
                self.connections_per_group
            ));
        }
        if self.heartbeat_interval == 0 || self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(format!(
                "heartbeat timeout {} ns must exceed the heartbeat interval {} ns (> 0)",
                self.heartbeat_timeout, self.heartbeat_interval
            ));
        }
        Ok(())
    }
}

/// The login socket's path in `folder`.
pub(crate) fn socket_path(folder: &Path) -> PathBuf {
    folder.join("login.sock")
}
