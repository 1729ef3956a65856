//! The shm-tcp side of a measurement between two processes, shared by the benches (as
//! `common::ours`) and by `examples/pingpong.rs` (through
//! `#[path = "../benches/common/ours.rs"] mod ours;`): the measuring process's acceptor and its
//! wait for the peer's login, the peer's connect, sending a message, receiving one in place, and
//! the occasional `poll` a busy loop owes the connection.
//!
//! The measuring process listens (an [`Acceptor`] on loopback) and the peer connects (a client
//! [`Connection`]), both with their state files in one fresh folder, so every trial starts a new
//! pair (sequence numbers from 0, nothing queued). Neither process runs a thread besides its
//! own: `push` writes at once, `front` reads the socket when nothing is buffered, and
//! [`Poller`] calls `poll` (heartbeats, the peer's timeout, a disconnect noticed outside `poll`)
//! at most every [`POLL_EVERY`], checking the clock only every [`CLOCK_EVERY`] calls.
//!
//! Errors are boxed, the same type as `peers::Error` (an alias of the same type), so either
//! includer mixes the two freely.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shm_tcp::{
    Acceptor, AcceptorEvent, AcceptorOptions, ConnId, Connection, ConnectionOptions, Durability,
};
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendError, SendSlot};

/// Errors of a measurement (the same type as `peers::Error`).
pub type Error = Box<dyn std::error::Error>;

/// The measuring process's name (the acceptor).
pub const ACCEPTOR: &str = "bench";
/// The peer's name (the client).
pub const CLIENT: &str = "peer";
/// The acceptor's session name.
const SESSION: &str = "run";

/// How long the measuring process waits for the peer to log in.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The most time between two `poll`s of a busy loop: well inside the default heartbeat
/// interval (100 ms) and peer timeout (3 s).
pub const POLL_EVERY: Duration = Duration::from_millis(10);

/// [`Poller::tick`]s between two looks at the clock (a vDSO call, kept out of most polls).
pub const CLOCK_EVERY: u32 = 256;

/// The caller's clock, as the library expects it.
#[inline]
pub fn now() -> u64 {
    shm_channel::monotonic_nanos()
}

/// Options for one side of a trial: state files in `dir`, `durability`, and a receive buffer
/// that takes the largest message a `Connection<C>` can send (the default takes 64 KiB).
pub fn options<const C: usize>(dir: &Path, durability: Durability) -> ConnectionOptions {
    let max = Connection::<C>::MAX_PAYLOAD;
    ConnectionOptions::new()
        .dir(dir)
        .durability(durability)
        .receive_buffer(1 << 20, max.max(64 << 10))
}

/// What the peer is told: the acceptor's port and the state folder, as `port@folder`.
pub fn address(port: u16, dir: &Path) -> String {
    format!("{port}@{}", dir.display())
}

/// The peer's reading of [`address`].
pub fn parse_address(address: &str) -> Result<(SocketAddr, PathBuf), Error> {
    let (port, dir) = address
        .split_once('@')
        .ok_or_else(|| format!("malformed shm-tcp address {address:?}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>()?));
    Ok((addr, PathBuf::from(dir)))
}

/// The measuring process's acceptor on `127.0.0.1`, a port of the system's choosing.
pub fn bind<const C: usize>(options: &ConnectionOptions) -> Result<Acceptor<C>, Error> {
    Ok(Acceptor::<C>::bind(
        ACCEPTOR,
        SESSION,
        AcceptorOptions::new(options.clone()),
    )?)
}

/// Polls `acceptor` until the peer has logged in and its connection is connected, calling
/// `alive` (the peer process is still running) between polls.
pub fn await_login<const C: usize>(
    acceptor: &mut Acceptor<C>,
    mut alive: impl FnMut() -> Result<(), Error>,
) -> Result<ConnId, Error> {
    let started = Instant::now();
    loop {
        let t = now();
        while let Some(event) = acceptor.poll(t, |_| Ok(())) {
            match event {
                AcceptorEvent::LoggedIn { .. } => {}
                AcceptorEvent::Refused { reason, .. } => {
                    return Err(format!("the peer's login was refused: {reason}").into())
                }
                AcceptorEvent::Failed { error, .. } => {
                    return Err(format!("the peer's login failed: {error}").into())
                }
                other => return Err(format!("unexpected acceptor event {other:?}").into()),
            }
        }
        if let Some(id) = acceptor.find(CLIENT) {
            let conn = acceptor.connection(id).expect("found above");
            conn.poll(t)?;
            if conn.is_connected() {
                return Ok(id);
            }
        }
        alive()?;
        if started.elapsed() > LOGIN_TIMEOUT {
            return Err("the peer did not log in".into());
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// The peer's side: connects to the acceptor at `address` ([`parse_address`]) and completes the
/// handshake.
pub fn connect<const C: usize>(
    address: &str,
    durability: Durability,
) -> Result<Connection<C>, Error> {
    let (addr, dir) = parse_address(address)?;
    let options = options::<C>(&dir, durability);
    Ok(Connection::<C>::connect(addr, CLIENT, ACCEPTOR, &options)?)
}

/// Calls `poll` on a connection at most every [`POLL_EVERY`], looking at the clock every
/// [`CLOCK_EVERY`] ticks: what a busy loop owes the connection (heartbeats, the peer's timeout,
/// and the report of a disconnect that `front` or `push` noticed).
pub struct Poller {
    ticks: u32,
    last: u64,
}

impl Default for Poller {
    fn default() -> Self {
        Self::new()
    }
}

impl Poller {
    /// A poller that polls at its first look at the clock.
    pub fn new() -> Self {
        Self { ticks: 0, last: 0 }
    }

    /// One turn of a busy loop.
    #[inline(always)]
    pub fn tick<const C: usize>(&mut self, conn: &mut Connection<C>) -> Result<(), Error> {
        self.ticks += 1;
        if self.ticks < CLOCK_EVERY {
            return Ok(());
        }
        self.ticks = 0;
        let t = now();
        if t.saturating_sub(self.last) >= POLL_EVERY.as_nanos() as u64 {
            self.poll(conn, t)?;
        }
        Ok(())
    }

    /// Polls now (the queue is full: the acks must be read, what waits must be written).
    #[inline]
    pub fn poll<const C: usize>(&mut self, conn: &mut Connection<C>, t: u64) -> Result<(), Error> {
        self.last = t;
        conn.poll(t)?;
        if !conn.is_connected() {
            return Err(format!("the connection is {:?}", conn.state()).into());
        }
        Ok(())
    }
}

/// Sends `payload` with `tag`: `push` (one `writev`, at once) unless `more`, then `push_more`
/// (published, written by the next [`flush`] or `push`). While the queue is full, polls (which
/// reads the peer's acks and writes what waits) and calls `relax`.
#[inline(always)]
pub fn send<const C: usize>(
    conn: &mut Connection<C>,
    tag: u16,
    payload: &[u8],
    more: bool,
    poller: &mut Poller,
    mut relax: impl FnMut(),
) -> Result<(), Error> {
    let len = payload.len() as u32;
    loop {
        match conn.alloc(len, tag) {
            Ok(mut slot) => {
                slot.payload_mut().copy_from_slice(payload);
                if more {
                    slot.push_more();
                } else {
                    slot.push();
                }
                return Ok(());
            }
            Err(SendError::Full) => {}
            Err(error) => return Err(error.into()),
        }
        poller.poll(conn, now())?;
        relax();
    }
}

/// Writes what [`send`] queued with `more` (one `writev` for the burst).
// Used by the benches' batched streams; the example sends one message at a time.
#[allow(dead_code)]
#[inline(always)]
pub fn flush<const C: usize>(conn: &mut Connection<C>) -> Result<(), Error> {
    conn.flush_queued()?;
    Ok(())
}

/// Waits for the next message (each empty `front` is one `read` of the socket), hands its tag
/// and payload, in place, to `read`, then pops it. `relax` runs between two empty polls.
#[inline(always)]
pub fn recv<const C: usize, R>(
    conn: &mut Connection<C>,
    poller: &mut Poller,
    mut relax: impl FnMut(),
    read: impl FnOnce(u16, &[u8]) -> R,
) -> Result<R, Error> {
    loop {
        match conn.front() {
            Ok(message) => {
                let result = read(message.tag(), message.payload());
                conn.pop()?;
                return Ok(result);
            }
            Err(RecvError::Empty) => {}
            Err(error) => return Err(error.into()),
        }
        poller.tick(conn)?;
        relax();
    }
}

/// The file system `path` lies on, from `/proc/self/mounts` (the longest mount point that is a
/// prefix of it): "ext4 (/dev/vda on /)", say. What decides whether `msync` reaches a disk.
pub fn filesystem(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "unknown file system (no /proc/self/mounts)".to_string();
    };
    let best = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            // Spaces in mount points are written as \040.
            let point = point.replace("\\040", " ");
            path.starts_with(&point)
                .then(|| (point, device.to_string(), kind.to_string()))
        })
        .max_by_key(|(point, _, _)| point.len());
    match best {
        Some((point, device, kind)) => format!("{kind} ({device} on {point})"),
        None => "unknown file system".to_string(),
    }
}
