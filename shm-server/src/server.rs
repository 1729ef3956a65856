//! `Server`: the control half and the groups, together for one thread or split for several.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::config::ServerConfig;
use crate::control::{Control, Decision, LoginRequest};
use crate::error::ServerError;
use crate::group::{Group, GroupCounters, Reply, Request};
use crate::handoff::{event_ring, GroupLink};

/// A busy-polling server for clients of channel capacity `C`: logins on a Unix socket in its
/// folder, connections sharded into groups, no thread of its own.
///
/// One thread may serve everything, calling [`poll_control`](Self::poll_control) and
/// [`poll_group`](Self::poll_group) in turn; or [`split`](Self::split) it into its [`Control`]
/// and its [`Group`]s and give each group its own thread.
///
/// ```
/// use shm_server::{Client, ClientOptions, Decision, Server, ServerConfig};
/// use shm_channel::monotonic_nanos;
/// use spsc_core::{MessageReceiver, MessageSender};
///
/// # let dir = tempfile::tempdir().unwrap();
/// let config = ServerConfig::new("gateway", dir.path())?.groups(2, 16);
/// let mut server = Server::<4096>::new(config, |login| match login.least_loaded_group() {
///     Some(group) => Decision::Accept { group },
///     None => Decision::Reject("full".into()),
/// })?;
///
/// // Normally another process; `connect` waits for the server's answer, so poll meanwhile.
/// let folder = dir.path().to_path_buf();
/// let client = std::thread::spawn(move || {
///     let mut client = Client::<4096>::connect(&folder, "trader-1", &ClientOptions::new())?;
///     client.send(1, b"ping")?;
///     let reply = loop {
///         client.poll(monotonic_nanos())?;
///         if let Ok(message) = client.front() {
///             break message.payload().to_vec();
///         }
///     };
///     client.pop()?;
///     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(reply)
/// });
/// while !client.is_finished() {
///     let now = monotonic_nanos();
///     server.poll_control(now);
///     server.poll_group(0, now, |request, reply| {
///         let _ = reply.send(request.tag(), request.payload()); // echo
///     });
///     server.poll_group(1, now, |request, reply| {
///         let _ = reply.send(request.tag(), request.payload());
///     });
/// }
/// assert_eq!(client.join().unwrap().unwrap(), b"ping");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server<const C: usize> {
    control: Control<C>,
    groups: Vec<Group<C>>,
}

impl<const C: usize> core::fmt::Debug for Server<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Server")
            .field("control", &self.control)
            .field("groups", &self.groups)
            .finish()
    }
}

impl<const C: usize> Server<C> {
    /// Starts a server: takes the folder's lock (`login.lock`: one live server per folder),
    /// binds `login.sock`, and allocates every table and ring up front. `check` decides each
    /// login that passed the uid, capacity, duplicate and limit checks.
    ///
    /// # Errors
    /// [`ServerError::Config`] for out-of-range settings, [`ServerError::AlreadyRunning`] if a
    /// live server holds the folder, [`ServerError::Io`] if the folder or socket cannot be made.
    pub fn new(
        config: ServerConfig,
        check: impl FnMut(&LoginRequest<'_>) -> Decision + Send + 'static,
    ) -> Result<Self, ServerError> {
        config
            .check()
            .map_err(|reason| ServerError::Config { reason })?;
        let mut to_groups = Vec::with_capacity(config.groups);
        let mut from_groups = Vec::with_capacity(config.groups);
        let mut counters = Vec::with_capacity(config.groups);
        let mut groups = Vec::with_capacity(config.groups);
        for index in 0..config.groups {
            let (to_tx, to_rx) = event_ring();
            let (from_tx, from_rx) = event_ring();
            let shared = Arc::new(GroupCounters::default());
            let link = GroupLink {
                inbox: to_rx,
                outbox: from_tx,
                unsent: VecDeque::with_capacity(config.connections_per_group),
                table: Vec::with_capacity(config.connections_per_group),
            };
            groups.push(Group::new(
                index,
                link,
                config.budget,
                config.heartbeat_interval,
                config.heartbeat_timeout,
                Arc::clone(&shared),
            ));
            to_groups.push(to_tx);
            from_groups.push(from_rx);
            counters.push(shared);
        }
        let control = Control::new(config, Box::new(check), to_groups, from_groups, counters)?;
        Ok(Self { control, groups })
    }

    /// [`Control::poll_control`].
    pub fn poll_control(&mut self, now: u64) -> usize {
        self.control.poll_control(now)
    }

    /// [`Group::poll`] on group `group`; 0 if there is no such group.
    pub fn poll_group<F>(&mut self, group: usize, now: u64, handler: F) -> usize
    where
        F: FnMut(&Request<'_>, &mut Reply<'_, C>),
    {
        match self.groups.get_mut(group) {
            Some(group) => group.poll(now, handler),
            None => 0,
        }
    }

    /// The control half.
    pub fn control(&mut self) -> &mut Control<C> {
        &mut self.control
    }

    /// Group `group`.
    pub fn group(&mut self, group: usize) -> Option<&mut Group<C>> {
        self.groups.get_mut(group)
    }

    /// The control half and the groups, to poll from separate threads (each is `Send`).
    pub fn split(self) -> (Control<C>, Vec<Group<C>>) {
        (self.control, self.groups)
    }
}
