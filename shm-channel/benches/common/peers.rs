//! The plumbing of a measurement between two processes, shared by these benches (as
//! `common::peers`), by the workspace's `pingpong` example, which lives in `shm-tcp` because it
//! measures that crate too (`shm-tcp/examples/pingpong.rs`, through
//! `#[path = "../../shm-channel/benches/common/peers.rs"] mod peers;`), and by `shm-tcp`'s
//! benches, for their raw TCP reference: the peer process (this very program, re-executed) and
//! its CPU, the channel's attach handshake, the sockets (TCP loopback with `TCP_NODELAY`, a Unix
//! socket in the abstract namespace) and their polled reads and writes, and the sending of a ping
//! or an echo on the channel ([`filled_slot!`], which is why the benches and the example declare
//! this module `#[macro_use]`).
//!
//! One file included three times, not a crate or a module of the library: an example and a bench
//! cannot depend on each other, and none of this belongs in `shm_channel`'s API. Each includer
//! keeps what only it needs (the example its table and `--child` arguments, the benches their
//! contenders, the floor and the streaming test), so everything here is used by these benches
//! and by the example, and neither needs to silence dead code for it (`shm-tcp`'s benches use the
//! processes, pinning, sockets and message contents only, and allow the rest). What idles inside
//! a timed loop takes its `relax` from the caller (a generic closure, or an expression in the
//! macro), so each includer keeps its own way of idling and its loops compile to what they were
//! before they were shared.
//!
//! Also here, because all of them report what they measured the same way: the message contents every
//! round trip writes and checks ([`fill`], [`filled_with`]), the two raw floors ([`Floor`]), and
//! what a reader needs to reproduce a figure: the CPU model ([`cpu_model`]), the load
//! ([`load_average`]) and the placement of the two processes' CPUs, told from the floor trials of
//! the run itself ([`placements`]); and the median as a clock that advances in steps allows
//! ([`fine_p50`]).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{Mode as FileMode, OFlags};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
use shm_channel::{Channel, ChannelOptions, End, Receiver, Sender};
use spsc_core::{MessageReceiver, MessageSender, RecvError};

/// Errors of a measurement: it fails loudly rather than report a broken run.
pub type Error = Box<dyn std::error::Error>;

/// How long the measuring process waits for the peer to connect or attach.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Failed polls between two checks that the other process still exists (a check is a system
/// call: rare enough to stay out of the numbers, frequent enough to notice a dead peer in
/// well under a second).
pub const LIVENESS_EVERY: u64 = 1 << 22;

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
struct SegmentGuard<'a, const C: usize, const L: usize> {
    name: &'a str,
    options: &'a ChannelOptions,
    linked: bool,
}

impl<const C: usize, const L: usize> SegmentGuard<'_, C, L> {
    fn unlink(&mut self) -> Result<(), Error> {
        self.linked = false;
        Channel::<C, L>::unlink(self.name, self.options)?;
        Ok(())
    }
}

impl<const C: usize, const L: usize> Drop for SegmentGuard<'_, C, L> {
    fn drop(&mut self) {
        if self.linked {
            let _ = Channel::<C, L>::unlink(self.name, self.options);
        }
    }
}

/// The measuring side (end A) of a fresh channel of `L` lanes in `/dev/shm`, named after `what`:
/// creates it,
/// starts the peer with `spawn(name)`, and waits for the peer's hello ([`attach_channel`]). The
/// segment file is unlinked as soon as the peer has attached (so even Ctrl-C or a crash later
/// leaves no file), and on any error before.
pub fn create_channel<const C: usize, const L: usize>(
    what: &str,
    spawn: impl FnOnce(&str) -> Result<Peer, Error>,
) -> Result<(Sender<C, L>, Receiver<C, L>, Peer), Error> {
    let name = unique_name(what);
    let options = ChannelOptions::new();
    let endpoint = Channel::<C, L>::create(&name, End::A, &options)?;
    let mut segment = SegmentGuard::<C, L> {
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
pub fn attach_channel<const C: usize, const L: usize>(
    name: &str,
) -> Result<(Sender<C, L>, Receiver<C, L>), Error> {
    let endpoint = Channel::<C, L>::open(name, End::B, &ChannelOptions::new())?;
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

// ---------------------------------------------------------------------------------------------
// Message contents
// ---------------------------------------------------------------------------------------------

/// Word `i` of round trip `seq`'s message: word 0 is `seq` itself (the streaming consumer counts
/// by it), every other word differs from it and from the previous message's.
#[inline(always)]
fn word_of(seq: u64, i: u64) -> u64 {
    seq ^ (i << 48)
}

/// Writes round trip `seq`'s contents into every byte of `message`: word `i` (8 bytes,
/// little-endian; a short last word truncated) is `seq ^ (i << 48)`. Every word changes from one
/// message to the next, so no transport can pass the check in [`filled_with`] by moving only a
/// sequence word: every contender, floors included, writes and checks the same bytes.
#[inline(always)]
pub fn fill(message: &mut [u8], seq: u64) {
    let mut words = message.chunks_exact_mut(8);
    let mut i = 0;
    for word in &mut words {
        word.copy_from_slice(&word_of(seq, i).to_le_bytes());
        i += 1;
    }
    let tail = words.into_remainder();
    let n = tail.len();
    tail.copy_from_slice(&word_of(seq, i).to_le_bytes()[..n]);
}

/// Whether every byte of `payload` is what [`fill`] wrote for `seq`. Reads all of it, with no
/// early exit: the receiving side of every contender touches every line of the message.
#[inline(always)]
pub fn filled_with(payload: &[u8], seq: u64) -> bool {
    let mut words = payload.chunks_exact(8);
    let mut i = 0;
    let mut same = true;
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        same &= u64::from_le_bytes(bytes) == word_of(seq, i);
        i += 1;
    }
    let tail = words.remainder();
    same & (tail == &word_of(seq, i).to_le_bytes()[..tail.len()])
}

// ---------------------------------------------------------------------------------------------
// The raw floors
// ---------------------------------------------------------------------------------------------

/// Everything in a floor's mapping sits alone in a 128-byte block: adjacent-line prefetch pairs
/// 64-byte lines, so a line sharing its 128-byte pair with the other side's line would move
/// more than the floor claims to.
const BLOCK: usize = 128;
/// The peer sets this word once it has mapped the file.
const READY: usize = 0;
/// Parent → peer: the sequence word.
const PING_SEQ: usize = BLOCK;
/// Peer → parent: the sequence word.
const PONG_SEQ: usize = 2 * BLOCK;
/// Parent → peer: the payload, from here.
const PING_DATA: usize = 3 * BLOCK;
/// The end of a ping-pong.
const FLOOR_STOP: u64 = u64::MAX;

/// A raw floor's shared mapping: the two sequence words and, for a same-bytes floor, a payload
/// area each way, every one in blocks of its own. A file in `/dev/shm`, removed as soon as both
/// processes have mapped it.
struct FloorMap {
    base: NonNull<u8>,
    len: usize,
    payload: usize,
}

impl FloorMap {
    /// Bytes of one payload area, whole blocks.
    fn span(payload: usize) -> usize {
        payload.next_multiple_of(BLOCK)
    }

    fn pong_data(&self) -> usize {
        PING_DATA + Self::span(self.payload)
    }

    fn open(path: &str, payload: usize, create: bool) -> Result<Self, Error> {
        let len = (PING_DATA + 2 * Self::span(payload)).next_multiple_of(4096);
        let flags = if create {
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC
        } else {
            OFlags::RDWR | OFlags::CLOEXEC
        };
        let fd = rustix::fs::open(path, flags, FileMode::from_raw_mode(0o600))?;
        if create {
            rustix::fs::ftruncate(&fd, len as u64)?;
        } else if rustix::fs::fstat(&fd)?.st_size < len as i64 {
            return Err("the floor's file is shorter than its layout".into());
        }
        // SAFETY: a fresh shared mapping of a file opened read-write that has `len` bytes
        // (zero-filled when created, checked when opened); no existing memory is affected.
        let base = unsafe {
            rustix::mm::mmap(
                core::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let base = NonNull::new(base.cast::<u8>()).ok_or("mmap returned null")?;
        Ok(Self { base, len, payload })
    }

    /// The sequence word at `offset` (one of the constants above).
    #[inline(always)]
    fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset < PING_DATA && offset.is_multiple_of(BLOCK));
        // SAFETY: `offset` is a block boundary inside the page-aligned mapping, so aligned for
        // an `AtomicU64` and in bounds; the mapping lives as long as `self`, and an atomic
        // accepts any bytes and any concurrent access from the other process.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// The start of the payload area at `offset` (`PING_DATA` or `pong_data()`).
    #[inline(always)]
    fn data(&self, offset: usize) -> *mut u8 {
        debug_assert!(offset + self.payload <= self.len);
        // SAFETY: in bounds of the mapping: `open` sized it for both areas.
        unsafe { self.base.as_ptr().add(offset) }
    }
}

impl Drop for FloorMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`; nothing borrowed from it outlives
        // `self`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The measuring side of a raw cross-process ping-pong, the least a transport could cost on this
/// machine: no queue, no index, no header, just what must cross.
///
/// - `payload == 0`, the **8-byte floor** (two lines): the parent stores `seq` into one word,
///   the peer echoes it into another.
/// - `payload > 0`, the **same-bytes floor** (two lines each way for a 64-byte payload): the
///   parent writes the payload into its own area, then stores `seq` with Release; the peer loads
///   `seq` with Acquire, copies the payload into its own area and stores `seq` back with Release;
///   the parent loads it with Acquire and checks every byte of the echo ([`filled_with`]). That
///   is what any transport moving `payload` bytes and telling the other side about them must do.
pub struct Floor {
    map: FloorMap,
    peer: Peer,
}

impl Floor {
    /// Creates the mapping in `/dev/shm`, starts the peer with `spawn(path, payload)` (which
    /// runs [`floor_echo`]), waits until it has mapped the file, and removes the file.
    pub fn start(
        payload: usize,
        spawn: impl FnOnce(&str) -> Result<Peer, Error>,
    ) -> Result<Self, Error> {
        let path = format!("/dev/shm/{}", unique_name("floor"));
        let map = FloorMap::open(&path, payload, true);
        let result = map.and_then(|map| {
            let mut peer = spawn(&path)?;
            let started = Instant::now();
            while map.word(READY).load(Ordering::Acquire) == 0 {
                peer.check_running()?;
                if started.elapsed() > CONNECT_TIMEOUT {
                    return Err("the floor's peer did not map the file".into());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(Self { map, peer })
        });
        // Mapped by both (or failed): the name is no longer needed.
        let _ = rustix::fs::unlink(&path);
        result
    }

    /// One round trip of message `seq` (`seq` from 1, below `u64::MAX`); `message` is the
    /// sender's buffer, `payload` bytes long (unused by the 8-byte floor). `relax` runs between
    /// two polls that found nothing.
    #[inline(always)]
    pub fn round_trip(
        &mut self,
        seq: u64,
        message: &mut [u8],
        mut relax: impl FnMut(),
    ) -> Result<(), Error> {
        let map = &self.map;
        let payload = map.payload;
        if payload > 0 {
            debug_assert_eq!(message.len(), payload);
            // Built in a private buffer and copied, as a channel's sender copies into its slot.
            fill(message, seq);
            // SAFETY: the ping area is `payload` bytes of the mapping, and nothing else writes
            // it; the peer reads it only between its Acquire load of a new `PING_SEQ` (stored
            // below, after this copy) and its Release store of the same value to `PONG_SEQ`,
            // which this side waited for in the previous round trip before coming back here.
            unsafe {
                std::ptr::copy_nonoverlapping(message.as_ptr(), map.data(PING_DATA), payload)
            };
        }
        map.word(PING_SEQ).store(seq, Ordering::Release);
        let mut polls = 0u64;
        while map.word(PONG_SEQ).load(Ordering::Acquire) != seq {
            polls += 1;
            if polls.is_multiple_of(LIVENESS_EVERY) {
                self.peer.check_running()?;
            }
            relax();
        }
        if payload > 0 {
            // SAFETY: the peer wrote the pong area before its Release store of `seq`, which the
            // Acquire load above saw, and writes it again only after this side's next store to
            // `PING_SEQ`: nobody writes it while this borrow lives.
            let echo = unsafe { std::slice::from_raw_parts(map.data(map.pong_data()), payload) };
            if !filled_with(echo, seq) {
                return Err(
                    format!("floor round trip {seq}: the echo is not what was sent").into(),
                );
            }
        }
        Ok(())
    }

    /// Stops the peer and waits for it to exit.
    pub fn finish(&mut self) -> Result<(), Error> {
        self.map.word(PING_SEQ).store(FLOOR_STOP, Ordering::Release);
        self.peer.finish()
    }
}

/// The peer of a [`Floor`]: maps `path`, echoes every round trip until told to stop. `relax`
/// runs between two polls that found nothing; `orphaned` says whether the measuring process is
/// gone (checked every [`LIVENESS_EVERY`] polls).
pub fn floor_echo(
    path: &str,
    payload: usize,
    mut relax: impl FnMut(),
    orphaned: impl Fn() -> bool,
) -> Result<(), Error> {
    let map = FloorMap::open(path, payload, false)?;
    map.word(READY).store(1, Ordering::Release);
    let (ping, pong) = (map.word(PING_SEQ), map.word(PONG_SEQ));
    let (from, to) = (map.data(PING_DATA), map.data(map.pong_data()));
    let mut last = 0;
    let mut polls = 0u64;
    loop {
        let seq = ping.load(Ordering::Acquire);
        if seq == last {
            polls += 1;
            if polls.is_multiple_of(LIVENESS_EVERY) && orphaned() {
                return Err("the measuring process is gone".into());
            }
            relax();
            continue;
        }
        if seq == FLOOR_STOP {
            return Ok(());
        }
        if payload > 0 {
            // SAFETY: both areas are `payload` bytes of the mapping and do not overlap. The
            // parent wrote the ping area before its Release store of `seq` (seen above) and
            // leaves it alone until this side's store below; only this side writes the pong
            // area, which the parent reads after that store and before its next ping.
            unsafe { std::ptr::copy_nonoverlapping(from, to, payload) };
        }
        pong.store(seq, Ordering::Release);
        last = seq;
    }
}

// ---------------------------------------------------------------------------------------------
// Where a figure came from
// ---------------------------------------------------------------------------------------------

/// The CPU as `/proc/cpuinfo` names it: its "model name", and the vendor's family, model and
/// stepping (a guest's model name is often just "AMD EPYC", which says nothing of the
/// generation), with the AMD generation those imply when they are unambiguous.
pub fn cpu_model() -> String {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return "unknown CPU (no /proc/cpuinfo)".to_string();
    };
    // The first processor's fields: the two vCPUs of a guest are alike.
    let field = |key: &str| {
        info.lines()
            .find(|line| line.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|line| line.split_once(':'))
            .map(|(_, value)| value.trim().to_string())
    };
    let name = field("model name").unwrap_or_else(|| "unknown model".to_string());
    let number = |key: &str| field(key).and_then(|v| v.parse::<u32>().ok());
    let (Some(family), Some(model)) = (number("cpu family"), number("model")) else {
        return name;
    };
    let flags = field("flags").unwrap_or_default();
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    let generation = match (field("vendor_id").as_deref(), family) {
        (Some("AuthenticAMD"), 0x17) => Some("Zen 1/Zen 2"),
        (Some("AuthenticAMD"), 0x19) if has("avx512f") => Some("Zen 4"),
        (Some("AuthenticAMD"), 0x19) => Some("Zen 3"),
        (Some("AuthenticAMD"), 0x1A) => Some("Zen 5"),
        _ => None,
    };
    let mut text = format!(
        "{name} (family {family:#x}, model {model:#x}, stepping {}",
        number("stepping").map_or_else(|| "?".to_string(), |s| s.to_string())
    );
    if let Some(generation) = generation {
        text.push_str(&format!(": {generation}"));
    }
    if has("hypervisor") {
        text.push_str("; a virtual machine");
    }
    text.push(')');
    text
}

/// The 1-, 5- and 15-minute load averages (`/proc/loadavg`), as `uptime` prints them: other work
/// on a 2-CPU machine takes the CPUs the two spinning processes need.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_string(),
        |text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        },
    )
}

/// Two floor trials whose p50s differ by more than this factor, with no trial in between, ran
/// in different placements. On the AMD EPYC (Zen 4) guest these benches were recorded on, one
/// placement's 8-byte floor trials spread by up to 1.2× within a run, and the placements lie
/// 1.7× (nearest to near) and 3.3× (near to far) apart.
// The placement items are used by the report and the example; the criterion bench, which
// includes this file too, only prints the CPU and the load.
#[allow(dead_code)]
pub const PLACEMENT_GAP: f64 = 1.6;

/// The names of the placements, by the 8-byte floor round trip's p50 (ns) on the AMD EPYC
/// (Zen 4) guest of BENCHMARKS.md, whose two vCPUs the hypervisor moves by itself between
/// three: "nearest" (70–80 ns, seldom; it behaves like two threads of one core), "near"
/// (107–150 ns here, 137–250 ns in an independent harness on the same class of guest) and
/// "far" (478–520 ns here, 485–770 ns in that harness). Only the names come from these bands,
/// so that one placement is called the same in every run; which trials belong together is
/// decided by the gap rule of [`placements`] alone, and the printed ranges say what the names
/// meant on the machine at hand.
#[allow(dead_code)]
const PLACEMENT_BANDS: [(f64, &str); 3] = [(100.0, "nearest"), (350.0, "near"), (f64::MAX, "far")];

/// A placement: floor trials whose p50s lie within one cluster.
#[allow(dead_code)]
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    /// "nearest", "near" or "far" ([`PLACEMENT_BANDS`]), numbered when two clusters share a
    /// band.
    pub name: String,
    /// The lowest and highest floor p50 in it, ns.
    pub low: f64,
    /// See `low`.
    pub high: f64,
}

/// Tells a run's placements from its 8-byte floor trials' p50s (ns), and which one each trial
/// ran in.
///
/// The rule: sort the p50s; wherever two neighbours differ by more than [`PLACEMENT_GAP`], a new
/// placement starts. Neighbours, not a multiple of the run's lowest: a threshold at 1.6× the
/// lowest would put a 78 ns trial's near neighbours at 130 ns in the far placement. Each cluster
/// is named by the band its median falls in ([`PLACEMENT_BANDS`]).
#[allow(dead_code)]
pub fn placements(p50s: &[f64]) -> (Vec<Placement>, Vec<usize>) {
    let mut sorted: Vec<f64> = p50s.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut clusters: Vec<(f64, f64, Vec<f64>)> = Vec::new();
    for &p50 in &sorted {
        match clusters.last_mut() {
            Some((_, high, members)) if p50 <= *high * PLACEMENT_GAP => {
                *high = p50;
                members.push(p50);
            }
            _ => clusters.push((p50, p50, vec![p50])),
        }
    }
    let band = |members: &[f64]| {
        let middle = members[members.len() / 2];
        PLACEMENT_BANDS
            .iter()
            .find(|(below, _)| middle < *below)
            .map_or("far", |(_, name)| name)
    };
    let bands: Vec<&str> = clusters.iter().map(|c| band(&c.2)).collect();
    let placements: Vec<Placement> = clusters
        .iter()
        .enumerate()
        .map(|(i, &(low, high, _))| {
            let same = bands.iter().filter(|&&b| b == bands[i]).count();
            let name = if same == 1 {
                bands[i].to_string()
            } else {
                let nth = bands[..=i].iter().filter(|&&b| b == bands[i]).count();
                format!("{} ({nth} of {same})", bands[i])
            };
            Placement { name, low, high }
        })
        .collect();
    let which = p50s
        .iter()
        .map(|&p50| {
            placements
                .iter()
                .position(|c| p50 >= c.low && p50 <= c.high)
                .expect("every p50 is in a cluster")
        })
        .collect();
    (placements, which)
}

/// The median of the round trips in `hist` (ns), interpolated within the timer's step.
///
/// Some clocks advance in steps: this project's KVM guest's TSC moves 26 ticks (10 ns) at a time,
/// so every round trip measures as a multiple of 10 ns and a plain median lands on one, which
/// is a 7% step for a 140 ns floor. The step is read off the histogram itself (the spacing of
/// the values within 50 ns of the median that hold at least 1% of the round trips; 1 ns where
/// every nanosecond occurs), and the median placed inside its step by the share of round trips below
/// it, as if they were spread evenly across the step. Medians above 1 µs are returned as they
/// are: a step of 10 ns is below 1% there.
// Used by the report and the example; not by the criterion bench, which includes this file too.
#[allow(dead_code)]
pub fn fine_p50(hist: &hdrhistogram::Histogram<u64>) -> f64 {
    let total = hist.len();
    let median = hist.value_at_quantile(0.5);
    if total == 0 || median > 1_000 {
        return median as f64;
    }
    let common = (total / 100).max(1);
    let ladder: Vec<u64> = hist
        .iter_recorded()
        .map(|v| v.value_iterated_to())
        .filter(|&v| v + 50 >= median && v <= median + 50 && hist.count_at(v) >= common)
        .collect();
    let mut gaps: Vec<u64> = ladder.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    // The median gap: a clock that jitters by a tick now and then leaves a few values one
    // nanosecond off the ladder, which the smallest gap would mistake for the step.
    let step = gaps.get(gaps.len() / 2).copied().unwrap_or(1).max(1) as f64;
    let low = median as f64 - step / 2.0;
    let (mut below, mut within) = (0u64, 0u64);
    for v in hist.iter_recorded() {
        let value = v.value_iterated_to() as f64;
        let count = v.count_at_value();
        if value < low {
            below += count;
        } else if value < low + step {
            within += count;
        }
    }
    if within == 0 {
        return median as f64;
    }
    let share = (total as f64 / 2.0 - below as f64) / within as f64;
    low + step * share.clamp(0.0, 1.0)
}
