//! The plumbing of a measurement between two processes, shared by the benches (as
//! `common::peers`) and by `examples/pingpong.rs` (through
//! `#[path = "../benches/common/peers.rs"] mod peers;`): the peer process (this very program,
//! re-executed) and its CPU, the channel's attach handshake, the sockets (TCP loopback with
//! `TCP_NODELAY`, a Unix socket in the abstract namespace) and their polled reads and writes, and
//! the sending of a ping or an echo on the channel ([`filled_slot!`], which is why both declare
//! this module `#[macro_use]`).
//!
//! One file included twice, not a crate or a module of the library: an example and a bench cannot
//! depend on each other, and none of this belongs in `shm_channel`'s API. Each includer keeps what
//! only it needs (the example its table and `--child` arguments, the benches their contenders,
//! the floor and the streaming test), so everything here is used by both and neither needs to
//! silence dead code for it. What idles inside a timed loop takes its `relax` from the caller (a
//! generic closure, or an expression in the macro), so each includer keeps its own way of idling
//! and its loops compile to what they were before they were shared.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
use shm_channel::{Channel, ChannelOptions, End, Receiver, Sender};
use spsc_core::{MessageReceiver, MessageSender, RecvError};

/// Errors of a measurement: it fails loudly rather than report a broken run.
pub type Error = Box<dyn std::error::Error>;

/// How long the measuring process waits for the peer to connect or attach.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the receivers wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Busy-polling: the channel polled without sleeping, sockets non-blocking and their reads
    /// retried in a loop.
    Busy,
    /// Blocking: the channel's futex (`WaitStrategy::Block`), blocking socket reads.
    Block,
}

/// A name no other run uses at the same time: `what`, process id, a counter, and the time.
pub fn unique_name(what: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "shm-channel-{what}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------------------------
// CPUs
// ---------------------------------------------------------------------------------------------

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Result<Vec<usize>, Error> {
    let set = sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .collect())
}

/// Pins this process to `cpu`.
pub fn pin_to(cpu: usize) -> Result<(), Error> {
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).map_err(|e| format!("pinning to CPU {cpu}: {e}"))?;
    Ok(())
}

/// The peer's CPU as passed on to it: the number, or `-` for none.
pub fn cpu_arg(cpu: Option<usize>) -> String {
    cpu.map_or_else(|| "-".to_string(), |cpu| cpu.to_string())
}

/// In the peer: pins it to the CPU [`cpu_arg`] passed on, if any.
pub fn pin_to_arg(arg: &str) -> Result<(), Error> {
    if arg != "-" {
        pin_to(arg.parse()?)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The peer process
// ---------------------------------------------------------------------------------------------

/// The peer process of one run: killed and reaped if the run fails.
pub struct Peer(Option<Child>);

impl Peer {
    /// Starts this program again, stdin closed, with what `configure` adds (the peer's job).
    pub fn spawn(configure: impl FnOnce(&mut Command)) -> Result<Self, Error> {
        let mut command = Command::new(std::env::current_exe()?);
        command.stdin(Stdio::null());
        configure(&mut command);
        Ok(Self(Some(command.spawn()?)))
    }

    /// Fails if the peer has exited (it should not, before [`finish`](Self::finish)).
    pub fn check_running(&mut self) -> Result<(), Error> {
        if let Some(child) = &mut self.0 {
            if let Some(status) = child.try_wait()? {
                self.0 = None;
                return Err(format!("the peer process exited early ({status})").into());
            }
        }
        Ok(())
    }

    /// Waits for the peer to exit, which it must do successfully.
    pub fn finish(&mut self) -> Result<(), Error> {
        if let Some(mut child) = self.0.take() {
            let status = child.wait()?;
            if !status.success() {
                return Err(format!("the peer process failed ({status})").into());
            }
        }
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The channel
// ---------------------------------------------------------------------------------------------

/// Removes a segment file when dropped, unless already removed.
struct SegmentGuard<'a, const C: usize> {
    name: &'a str,
    options: &'a ChannelOptions,
    linked: bool,
}

impl<const C: usize> SegmentGuard<'_, C> {
    fn unlink(&mut self) -> Result<(), Error> {
        self.linked = false;
        Channel::<C>::unlink(self.name, self.options)?;
        Ok(())
    }
}

impl<const C: usize> Drop for SegmentGuard<'_, C> {
    fn drop(&mut self) {
        if self.linked {
            let _ = Channel::<C>::unlink(self.name, self.options);
        }
    }
}

/// The measuring side (end A) of a fresh channel in `/dev/shm`, named after `what`: creates it,
/// starts the peer with `spawn(name)`, and waits for the peer's hello ([`attach_channel`]). The
/// segment file is unlinked as soon as the peer has attached (so even Ctrl-C or a crash later
/// leaves no file), and on any error before.
pub fn create_channel<const C: usize>(
    what: &str,
    spawn: impl FnOnce(&str) -> Result<Peer, Error>,
) -> Result<(Sender<C>, Receiver<C>, Peer), Error> {
    let name = unique_name(what);
    let options = ChannelOptions::new();
    let endpoint = Channel::<C>::create(&name, End::A, &options)?;
    let mut segment = SegmentGuard::<C> {
        name: &name,
        options: &options,
        linked: true,
    };
    let (tx, mut rx) = endpoint.split();
    let mut peer = spawn(&name)?;
    // Polled, not a blocking wait: that would arm the futex and make the peer's sender fence
    // after every push, even in busy mode.
    let started = Instant::now();
    loop {
        match rx.front() {
            Ok(_) => break,
            Err(RecvError::Empty) => {
                peer.check_running()?;
                if started.elapsed() > CONNECT_TIMEOUT {
                    return Err("the peer did not attach to the channel".into());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(e.into()),
        }
    }
    rx.pop()?;
    segment.unlink()?;
    Ok((tx, rx, peer))
}

/// The peer's side (end B) of the channel [`create_channel`] made: attaches and says hello.
pub fn attach_channel<const C: usize>(name: &str) -> Result<(Sender<C>, Receiver<C>), Error> {
    let endpoint = Channel::<C>::open(name, End::B, &ChannelOptions::new())?;
    let (mut tx, rx) = endpoint.split();
    tx.send(0, b"attached")?;
    Ok((tx, rx))
}

/// Allocates a message with tag `$tag` and a copy of `$payload` (a ping, or the echo of a
/// request) and evaluates to its slot, not yet published: the caller pushes it (an echo after
/// popping the request, because pop is the commit). Evaluates `$relax` between attempts while the
/// ring is full (never, in a ping-pong); returns any other error from the enclosing function. A
/// macro, not a function: a function returning the slot from inside its retry loop keeps the
/// sender borrowed across iterations, which the borrow checker rejects.
macro_rules! filled_slot {
    ($tx:expr, $tag:expr, $payload:expr, $relax:expr) => {{
        let payload: &[u8] = $payload;
        let mut slot = loop {
            match ::spsc_core::MessageSender::alloc(&mut $tx, payload.len() as u32, $tag) {
                Ok(slot) => break slot,
                Err(::spsc_core::SendError::Full) => $relax,
                Err(e) => return Err(e.into()),
            }
        };
        ::spsc_core::SendSlot::payload_mut(&mut slot).copy_from_slice(payload);
        slot
    }};
}

// ---------------------------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------------------------

/// A connected stream socket of either kind. Messages have a fixed size, so there is no framing.
pub enum Socket {
    /// TCP loopback, `TCP_NODELAY`.
    Tcp(TcpStream),
    /// A Unix stream socket in Linux's abstract namespace (which leaves no file).
    Uds(UnixStream),
}

impl Socket {
    /// The measuring side of TCP loopback: listens on an ephemeral port, starts the peer with
    /// `spawn(port)`, and accepts its connection.
    pub fn accept_tcp(
        spawn: impl FnOnce(&str) -> Result<Peer, Error>,
    ) -> Result<(Self, Peer), Error> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port().to_string();
        let mut peer = spawn(&port)?;
        listener.set_nonblocking(true)?;
        let stream = accept(&mut peer, || listener.accept().map(|(s, _)| s))?;
        stream.set_nodelay(true)?;
        Ok((Self::Tcp(stream), peer))
    }

    /// The measuring side of a Unix socket: listens on a fresh abstract name, starts the peer
    /// with `spawn(name)`, and accepts its connection.
    pub fn accept_uds(
        spawn: impl FnOnce(&str) -> Result<Peer, Error>,
    ) -> Result<(Self, Peer), Error> {
        let name = unique_name("uds");
        let listener = UnixListener::bind_addr(&SocketAddr::from_abstract_name(&name)?)?;
        let mut peer = spawn(&name)?;
        listener.set_nonblocking(true)?;
        let stream = accept(&mut peer, || listener.accept().map(|(s, _)| s))?;
        Ok((Self::Uds(stream), peer))
    }

    /// The peer's side of [`accept_tcp`](Self::accept_tcp), given the port.
    pub fn connect_tcp(port: &str) -> Result<Self, Error> {
        let stream = TcpStream::connect(("127.0.0.1", port.parse::<u16>()?))?;
        stream.set_nodelay(true)?;
        Ok(Self::Tcp(stream))
    }

    /// The peer's side of [`accept_uds`](Self::accept_uds), given the name.
    pub fn connect_uds(name: &str) -> Result<Self, Error> {
        Ok(Self::Uds(UnixStream::connect_addr(
            &SocketAddr::from_abstract_name(name)?,
        )?))
    }

    /// Non-blocking for [`Mode::Busy`], blocking for [`Mode::Block`].
    pub fn set_mode(&self, mode: Mode) -> io::Result<()> {
        let on = mode == Mode::Busy;
        match self {
            Socket::Tcp(s) => s.set_nonblocking(on),
            Socket::Uds(s) => s.set_nonblocking(on),
        }
    }

    /// `write_all` that also polls a non-blocking socket, calling `relax` after each
    /// `WouldBlock`.
    #[inline(always)]
    pub fn write_all(&mut self, mut buf: &[u8], mut relax: impl FnMut()) -> io::Result<()> {
        while !buf.is_empty() {
            let written = match self {
                Socket::Tcp(s) => s.write(buf),
                Socket::Uds(s) => s.write(buf),
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => relax(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// `read_exact` that also polls a non-blocking socket, calling `relax` after each
    /// `WouldBlock`; `Ok(false)` on a clean end of stream before the first byte.
    #[inline(always)]
    pub fn read_exact(&mut self, buf: &mut [u8], mut relax: impl FnMut()) -> io::Result<bool> {
        let mut filled = 0;
        while filled < buf.len() {
            let read = match self {
                Socket::Tcp(s) => s.read(&mut buf[filled..]),
                Socket::Uds(s) => s.read(&mut buf[filled..]),
            };
            match read {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => relax(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// [`read_exact`](Self::read_exact) of a message that must come: the end of the stream is
    /// an error.
    #[inline(always)]
    pub fn read_message(&mut self, buf: &mut [u8], relax: impl FnMut()) -> Result<(), Error> {
        if !self.read_exact(buf, relax)? {
            return Err("the peer closed the connection".into());
        }
        Ok(())
    }
}

/// Waits for the peer to connect, watching that it does not die first.
fn accept<S>(peer: &mut Peer, mut accept: impl FnMut() -> io::Result<S>) -> Result<S, Error> {
    let started = Instant::now();
    loop {
        match accept() {
            Ok(stream) => return Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        peer.check_running()?;
        if started.elapsed() > CONNECT_TIMEOUT {
            return Err("the peer did not connect".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
