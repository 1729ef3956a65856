//! The server's report: the cost of going through a [`Server`] instead of a bare channel, measured
//! between processes in the same run, with ratios.
//!
//! Rows (see `shm-server/BENCHMARKS.md` for what each measures and the figures):
//!
//! 1. **Echo round trip** of 8 and 64 bytes: the measuring process (a [`Client`], busy-polling)
//!    sends a message, the server process echoes it from its handler (`poll_control` and
//!    `poll_group` in one pinned thread), the client waits for the echo and checks every byte.
//!    Divided by the bare channel's round trip (the same two processes echoing over a
//!    `Channel<C>` directly, pop before push as the group does) and by the raw cross-process
//!    floor: `shm-channel`'s floors (its report's layout and method), the 8-byte one (an atomic
//!    ping-ponged in shared memory) for 8 bytes and the same-bytes one (64 bytes and a sequence
//!    word each way) for 64. The peer process, pinning, the channel's handshake and the message
//!    contents come from `shm-channel/benches/common/peers.rs`, included by path; the floor's
//!    mapping is this file's own (`peers::Floor` owns a process of its own, which would keep
//!    the floor out of the paired trial).
//! 2. The same with **64 connections** in the poll group, one active: 63 clients logged in and
//!    idle, held by a third process that wakes every 20 ms to keep their heartbeats up. Divided
//!    by the one-connection figure.
//! 3. **Aggregate echo throughput** with 16 clients, each keeping a window of [`WINDOW`]
//!    messages outstanding, next to the bare channel's single pair with the same number in
//!    flight (16 × [`WINDOW`]).
//!
//! **Paired blocks.** The server process holds the floors' mapping, the bare channel and three
//! servers (1, 64 and 16 connections) at once, and the measuring process tells it which to
//! poll: each trial cycles through short blocks ([`BLOCK`]) of every contender in the same two
//! processes, on the same two CPUs, so the server, the channel and the floor are compared within
//! milliseconds of each other (this guest's two vCPUs change placement by themselves, which moves
//! absolute figures by up to 3×). At a block's end the client sends a switch message on the link
//! in use and waits for its echo, so one link only is polled and each block starts with nothing
//! in flight. Rounds repeat this with fresh processes; ratios are per round, reported as the
//! median and the range over the rounds. Nothing is asserted on timings.
//!
//! The server thread calls `poll_group` on every pass of its loop and `poll_control` at most
//! once a millisecond ([`CONTROL_INTERVAL`]); one more row runs the one-connection server with
//! both on every pass, as the crate's doc example does. Last, in this process alone, what an
//! idle `poll_control` and `poll_group` call costs.
//!
//! `cargo bench -p shm-server --bench report` (about 50 s); `SHM_BENCH_ROUNDS=N` for more
//! rounds (default 5), `SHM_BENCH_QUICK=1` for a short run (2 rounds, short trials),
//! `SHM_SERVER_BENCH_CONTROL_NS=N` for the `poll_control` interval in ns (0: every pass),
//! `SHM_SERVER_BENCH_ONLY=calls` for the single-process per-call costs alone (e.g. to profile).

// The channel's streaming plumbing and the sockets are for the other includers of this file;
// this bench uses the peer process, pinning, the channel's attach handshake, the message
// contents and the statistics helpers.
#[allow(dead_code, unused_macros)]
#[macro_use]
#[path = "../../shm-channel/benches/common/peers.rs"]
mod peers;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use peers::{
    allowed_cpus, attach_channel, cpu_arg, cpu_model, create_channel, fill, filled_with, fine_p50,
    load_average, pin_to, pin_to_arg, unique_name, Error, Peer, LIVENESS_EVERY,
};
use shm_channel::{monotonic_nanos, Receiver, Sender};
use shm_server::{Client, ClientOptions, Decision, Server, ServerConfig};
use spsc_core::{MessageReceiver, RecvError, SendSlot};

/// The environment variable naming a peer's job (internal: set only by the parent).
const PEER_ENV: &str = "SHM_SERVER_BENCH_PEER";
/// Ring capacity of every channel and session: 64 KiB, small enough to stay in cache, room
/// for 900 messages of 64 bytes.
const C: usize = 1 << 16;
/// Messages each throughput client keeps outstanding.
const WINDOW: u64 = 32;
/// Throughput clients.
const CLIENTS: usize = 16;
/// Connections of the 64-connection server: one active, the rest idle.
const MANY: usize = 64;
/// Round-trip sizes.
const SIZES: [usize; 2] = [8, 64];

/// Message tags: a message of the test, switch to the link in the payload's first word, quit.
const TAG_DATA: u16 = 1;
const TAG_SWITCH: u16 = 2;

/// The links the server process polls. Each block of a trial runs one of them.
const CHANNEL: u64 = 0;
/// The server with one connection (the measuring process's client).
const SERVER_ONE: u64 = 1;
/// The server with 64 connections (63 idle).
const SERVER_MANY: u64 = 2;
/// The server with 16 connections (the throughput clients).
const SERVER_SIXTEEN: u64 = 3;
/// The one-connection server again, its thread calling `poll_control` on every pass of its
/// loop (as the crate's doc example does) instead of at most every [`CONTROL_INTERVAL`].
const SERVER_ONE_EVERY_PASS: u64 = 4;
/// How often the server thread calls `poll_control` (its two system calls, `accept` and
/// `epoll_wait`, would otherwise sit in every pass), unless `SHM_SERVER_BENCH_CONTROL_NS` says
/// otherwise: 1 ms, so a login waits at most that long for its answer.
const CONTROL_INTERVAL: u64 = 1_000_000;
/// The 8-byte raw floor: a sequence word each way in a shared mapping, nothing else.
const FLOOR: u64 = 5;
/// The same-bytes raw floor: the 64-byte payload and a sequence word each way.
const FLOOR_BYTES: u64 = 6;
/// Pseudo-link: the server process exits.
const QUIT: u64 = 99;
/// Pseudo-link: the server process polls everything until the first switch (logins).
const SETUP: u64 = u64::MAX;

// ---------------------------------------------------------------------------------------------
// Timer
// ---------------------------------------------------------------------------------------------

/// The time-stamp counter, fenced so it is not hoisted above the loads that ended the round
/// trip (as `shm-channel`'s report times its round trips).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn ticks() -> u64 {
    // SAFETY: `lfence` and `rdtsc` are baseline x86_64 instructions with no memory effects.
    unsafe {
        core::arch::x86_64::_mm_lfence();
        let t = core::arch::x86_64::_rdtsc();
        core::arch::x86_64::_mm_lfence();
        t
    }
}

/// Elsewhere: nanoseconds of `Instant` from a process-wide origin.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn ticks() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Nanoseconds per tick, by spinning for `span` against `Instant`.
fn calibrate(span: Duration) -> f64 {
    let (t0, i0) = (ticks(), Instant::now());
    while i0.elapsed() < span {}
    let (t1, elapsed) = (ticks(), i0.elapsed());
    elapsed.as_nanos() as f64 / (t1 - t0).max(1) as f64
}

/// 1 ns to 60 s, 3 significant digits (fixed bounds: `saturating_record` never resizes).
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

struct Config {
    rounds: usize,
    /// Blocks of each contender per paired trial (the first cycle is untimed warm-up).
    cycles: usize,
    /// Each block's length.
    block: Duration,
    /// Passed to the server process: its `poll_control` cadence in ns (0: every pass).
    control_ns: u64,
}

/// One block's length on a link (the default; quick runs use less).
const BLOCK: Duration = Duration::from_millis(20);

impl Config {
    fn from_env() -> Self {
        let quick = std::env::var("SHM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let rounds = std::env::var("SHM_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&r| r > 0)
            .unwrap_or(if quick { 2 } else { 5 });
        Self {
            rounds,
            cycles: if quick { 10 } else { 40 },
            block: if quick {
                Duration::from_millis(10)
            } else {
                BLOCK
            },
            control_ns: control_ns(),
        }
    }
}

fn control_ns() -> u64 {
    std::env::var("SHM_SERVER_BENCH_CONTROL_NS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CONTROL_INTERVAL)
}

// ---------------------------------------------------------------------------------------------
// Peers (the re-executed bench binary)
// ---------------------------------------------------------------------------------------------

/// In a peer process: runs the job [`PEER_ENV`] describes and exits.
fn run_peer_if_asked() {
    let Ok(spec) = std::env::var(PEER_ENV) else {
        return;
    };
    let result = peer_main(&spec);
    if let Err(error) = &result {
        eprintln!("shm-server report peer ({spec}): {error}");
    }
    std::process::exit(i32::from(result.is_err()));
}

fn orphaned() -> bool {
    rustix::process::getppid().is_none_or(|pid| pid.as_raw_nonzero().get() == 1)
}

fn peer_main(spec: &str) -> Result<(), Error> {
    let parts: Vec<&str> = spec.splitn(4, ':').collect();
    match parts[..] {
        ["echo", cpu, name, folder] => {
            pin_to_arg(cpu)?;
            echo_peer(name, Path::new(folder))
        }
        ["idle", count, folder] => idle_peer(count.parse()?, Path::new(folder)),
        _ => Err(format!("unknown peer job {spec:?}").into()),
    }
}

// ---------------------------------------------------------------------------------------------
// The raw floors, as links of the paired trial
// ---------------------------------------------------------------------------------------------

/// `shm-channel`'s floor layout (`peers::Floor`, whose mapping is private to that file and
/// which owns a peer process of its own, so it cannot share one with the other links):
/// everything in a 128-byte block of its own, so that adjacent-line prefetch never pairs the two
/// sides' lines.
const BLOCK_BYTES: usize = 128;
/// Measuring process → server process: the sequence word.
const PING: usize = BLOCK_BYTES;
/// Server process → measuring process: the sequence word.
const PONG: usize = 2 * BLOCK_BYTES;
/// The ping's payload (same-bytes floor).
const PING_DATA: usize = 3 * BLOCK_BYTES;
/// The echo's payload.
const PONG_DATA: usize = 4 * BLOCK_BYTES;
/// The same-bytes floor's payload.
const FLOOR_PAYLOAD: usize = 64;
/// Set in a ping word: a switch to the link in the low bits, not a round trip.
const SWITCH_BIT: u64 = 1 << 63;
/// The mapping's length: one page.
const FLOOR_LEN: usize = 4096;

/// The floors' shared mapping: a file in the trial's folder (tmpfs), mapped by both processes.
struct FloorMap {
    base: std::ptr::NonNull<u8>,
}

impl FloorMap {
    fn open(path: &Path, create: bool) -> Result<Self, Error> {
        use rustix::fs::{Mode, OFlags};
        use rustix::mm::{MapFlags, ProtFlags};
        let flags = if create {
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC
        } else {
            OFlags::RDWR | OFlags::CLOEXEC
        };
        let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o600))?;
        if create {
            rustix::fs::ftruncate(&fd, FLOOR_LEN as u64)?;
        } else if rustix::fs::fstat(&fd)?.st_size < FLOOR_LEN as i64 {
            return Err("the floor's file is shorter than its layout".into());
        }
        // SAFETY: a fresh shared mapping of a file opened read-write that has `FLOOR_LEN` bytes
        // (zero-filled when created, checked otherwise); no existing memory is affected.
        let base = unsafe {
            rustix::mm::mmap(
                core::ptr::null_mut(),
                FLOOR_LEN,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let base = std::ptr::NonNull::new(base.cast::<u8>()).ok_or("mmap returned null")?;
        Ok(Self { base })
    }

    /// The sequence word at `offset` (`PING` or `PONG`).
    #[inline(always)]
    fn word(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: `offset` is a block boundary inside the page-aligned mapping, so aligned and
        // in bounds; the mapping lives as long as `self`, and an atomic accepts any bytes and
        // any concurrent access from the other process.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// The payload area at `offset` (`PING_DATA` or `PONG_DATA`).
    #[inline(always)]
    fn data(&self, offset: usize) -> *mut u8 {
        // SAFETY: both areas lie inside the mapping (`FLOOR_PAYLOAD` bytes from a block start
        // well below `FLOOR_LEN`).
        unsafe { self.base.as_ptr().add(offset) }
    }
}

impl Drop for FloorMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`; nothing borrowed from it outlives
        // `self`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), FLOOR_LEN) };
    }
}

/// The server process's side of a floor: echoes each new ping word (copying `payload` bytes
/// first) until a switch, which it echoes too. A new ping is any value other than the last
/// echo: only this side writes the pong word, and the measuring process writes a fresh value
/// (round trips count up; a switch has [`SWITCH_BIT`]) only once it has seen the previous echo,
/// on this link or on the link it switched from.
fn floor_echo(map: &FloorMap, payload: usize) -> Result<u64, Error> {
    let (ping, pong) = (map.word(PING), map.word(PONG));
    let (from, to) = (map.data(PING_DATA), map.data(PONG_DATA));
    let mut last = pong.load(Ordering::Relaxed);
    let mut polls = 0u64;
    loop {
        let seq = ping.load(Ordering::Acquire);
        if seq == last {
            polls += 1;
            if polls.is_multiple_of(LIVENESS_EVERY) && orphaned() {
                return Err("the measuring process is gone".into());
            }
            continue;
        }
        if seq & SWITCH_BIT != 0 {
            pong.store(seq, Ordering::Release);
            return Ok(seq & !SWITCH_BIT);
        }
        if payload > 0 {
            // SAFETY: both areas are `payload` bytes of the mapping and do not overlap; the
            // measuring process wrote the ping area before its Release store of `seq` (seen
            // above) and leaves it alone until this side's store below; only this side writes
            // the pong area, which the other reads after that store and before its next ping.
            unsafe { std::ptr::copy_nonoverlapping(from, to, payload) };
        }
        pong.store(seq, Ordering::Release);
        last = seq;
    }
}

/// The measuring side of a floor round trip, as `peers::Floor::round_trip`: the payload built
/// in a private buffer and copied, every byte of the echo checked.
#[inline(always)]
fn floor_round_trip(
    map: &FloorMap,
    peer: &mut Peer,
    seq: u64,
    message: &mut [u8],
) -> Result<(), Error> {
    let payload = message.len();
    if payload > 0 {
        fill(message, seq);
        // SAFETY: the ping area is `FLOOR_PAYLOAD` ≥ `payload` bytes of the mapping that only
        // this side writes, and the server process reads it only between its Acquire load of a
        // new ping and its Release store of the echo, which this side waited for last time.
        unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), map.data(PING_DATA), payload) };
    }
    floor_exchange(map, peer, seq)?;
    if payload > 0 {
        // SAFETY: the server process wrote the pong area before its Release store of `seq`,
        // which `floor_exchange` Acquired, and writes it again only after this side's next ping.
        let echo = unsafe { std::slice::from_raw_parts(map.data(PONG_DATA), payload) };
        if !filled_with(echo, seq) {
            return Err(format!("floor round trip {seq}: the echo is not what was sent").into());
        }
    }
    Ok(())
}

/// Stores `word` as the ping and waits for its echo.
#[inline(always)]
fn floor_exchange(map: &FloorMap, peer: &mut Peer, word: u64) -> Result<(), Error> {
    map.word(PING).store(word, Ordering::Release);
    let mut polls = 0u64;
    while map.word(PONG).load(Ordering::Acquire) != word {
        polls += 1;
        if polls.is_multiple_of(LIVENESS_EVERY) {
            peer.check_running()?;
        }
    }
    Ok(())
}

/// The folder of the server for `link` inside a trial's folder.
fn server_folder(folder: &Path, link: u64) -> PathBuf {
    folder.join(format!("server{link}"))
}

/// The server process: the bare channel's echo and three servers, one polled at a time.
fn echo_peer(name: &str, folder: &Path) -> Result<(), Error> {
    let (mut tx, mut rx) = attach_channel::<C, 1>(name)?;
    let floor = FloorMap::open(&folder.join("floor"), false)?;
    let control_ns = control_ns();
    let mut servers = Vec::new();
    for (link, connections) in [
        (SERVER_ONE, 1),
        (SERVER_MANY, MANY),
        (SERVER_SIXTEEN, CLIENTS),
    ] {
        let config = ServerConfig::new(&format!("bench{link}"), server_folder(folder, link))?
            .groups(1, connections)
            .login_timeout(Duration::from_secs(10));
        servers.push(Server::<C>::new(config, |_| Decision::Accept { group: 0 })?);
    }
    let mut link = SETUP;
    loop {
        let next = match link {
            SETUP => setup(&mut servers, &mut tx, &mut rx)?,
            CHANNEL => channel_echo(&mut tx, &mut rx)?,
            SERVER_ONE..=SERVER_SIXTEEN => {
                serve(&mut servers[(link - SERVER_ONE) as usize], control_ns)?
            }
            SERVER_ONE_EVERY_PASS => serve(&mut servers[0], 0)?,
            FLOOR => floor_echo(&floor, 0)?,
            FLOOR_BYTES => floor_echo(&floor, 64)?,
            QUIT => return Ok(()),
            _ => return Err(format!("no link {link}").into()),
        };
        link = next;
    }
}

/// The link a switch message asks for.
fn switch_of(tag: u16, payload: &[u8]) -> Option<u64> {
    match tag {
        TAG_SWITCH => Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?)),
        _ => None,
    }
}

/// Polls every server (logins) and the channel, until the first switch.
fn setup(
    servers: &mut [Server<C>],
    tx: &mut Sender<C, 1>,
    rx: &mut Receiver<C, 1>,
) -> Result<u64, Error> {
    loop {
        let now = monotonic_nanos();
        for server in servers.iter_mut() {
            server.poll_control(now);
            server.poll_group(0, now, |request, reply| {
                let _ = reply.send(request.tag(), request.payload());
            });
        }
        if let Some(next) = echo_one(tx, rx)? {
            return Ok(next);
        }
        if orphaned() {
            return Err("the measuring process is gone".into());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Echoes one message of the channel, if there is one: pop, then push (the group's order).
/// `Some` if it was a switch or a quit.
#[inline(always)]
fn echo_one(tx: &mut Sender<C, 1>, rx: &mut Receiver<C, 1>) -> Result<Option<u64>, Error> {
    let message = match rx.front() {
        Ok(message) => message,
        Err(RecvError::Empty) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let tag = message.tag();
    let switch = switch_of(tag, message.payload());
    let slot = filled_slot!(*tx, tag, message.payload(), std::hint::spin_loop());
    rx.pop()?;
    slot.push();
    Ok(switch)
}

/// The bare channel's echo, until a switch.
fn channel_echo(tx: &mut Sender<C, 1>, rx: &mut Receiver<C, 1>) -> Result<u64, Error> {
    let mut polls = 0u64;
    loop {
        match echo_one(tx, rx)? {
            Some(next) => return Ok(next),
            None => {
                polls += 1;
                if polls.is_multiple_of(LIVENESS_EVERY) && orphaned() {
                    return Err("the measuring process is gone".into());
                }
            }
        }
    }
}

/// One server's loop, as a server thread runs it: `poll_control`, then `poll_group` with an
/// echoing handler, until a switch. `control_ns` 0 calls `poll_control` on every pass.
fn serve(server: &mut Server<C>, control_ns: u64) -> Result<u64, Error> {
    let mut switch = None;
    let mut failed = None;
    let mut polls = 0u64;
    let mut next_control = 0;
    loop {
        let now = monotonic_nanos();
        if now >= next_control {
            server.poll_control(now);
            next_control = now + control_ns;
        }
        let handled = server.poll_group(0, now, |request, reply| {
            if let Some(next) = switch_of(request.tag(), request.payload()) {
                switch = Some(next);
            }
            if let Err(error) = reply.send(request.tag(), request.payload()) {
                failed = Some(error);
            }
        });
        if let Some(error) = failed {
            return Err(format!("an echo could not be sent: {error}").into());
        }
        if let Some(next) = switch {
            return Ok(next);
        }
        if handled == 0 {
            polls += 1;
            if polls.is_multiple_of(LIVENESS_EVERY) && orphaned() {
                return Err("the measuring process is gone".into());
            }
        }
    }
}

/// The idle-connections holder: logs `count` clients in to the server in `folder`, says
/// `ready`, then wakes every 20 ms to poll them (heartbeats) until killed or orphaned.
fn idle_peer(count: usize, folder: &Path) -> Result<(), Error> {
    let options = ClientOptions::new().login_timeout(Duration::from_secs(10));
    let mut clients = (0..count)
        .map(|i| Client::<C>::connect(folder, &format!("idle{i}"), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    while !orphaned() {
        std::thread::sleep(Duration::from_millis(20));
        let now = monotonic_nanos();
        for client in &mut clients {
            let _ = client.poll(now)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The measuring side
// ---------------------------------------------------------------------------------------------

/// A link as the measuring process drives it: the sending and receiving halves of a channel
/// endpoint (the bare channel's, or a client's session).
trait Link {
    fn halves(&mut self) -> (&mut Sender<C, 1>, &mut Receiver<C, 1>);
}

struct Bare(Sender<C, 1>, Receiver<C, 1>);

impl Link for Bare {
    fn halves(&mut self) -> (&mut Sender<C, 1>, &mut Receiver<C, 1>) {
        (&mut self.0, &mut self.1)
    }
}

impl Link for Client<C> {
    fn halves(&mut self) -> (&mut Sender<C, 1>, &mut Receiver<C, 1>) {
        self.endpoint().halves()
    }
}

fn send(tx: &mut Sender<C, 1>, tag: u16, payload: &[u8]) -> Result<(), Error> {
    let slot = filled_slot!(*tx, tag, payload, std::hint::spin_loop());
    slot.push();
    Ok(())
}

/// Waits for the next message (an echo must come) and hands it to `check`, then pops it.
#[inline(always)]
fn receive<T>(
    rx: &mut Receiver<C, 1>,
    peer: &mut Peer,
    check: impl FnOnce(u16, &[u8]) -> T,
) -> Result<T, Error> {
    let mut polls = 0u64;
    loop {
        match rx.front() {
            Ok(message) => {
                let result = check(message.tag(), message.payload());
                rx.pop()?;
                return Ok(result);
            }
            Err(RecvError::Empty) => {
                polls += 1;
                if polls.is_multiple_of(LIVENESS_EVERY) {
                    peer.check_running()?;
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Whether `link` is one of the floors.
fn is_floor(link: u64) -> bool {
    link == FLOOR || link == FLOOR_BYTES
}

/// Tells the server process to poll `next` from now on, over `link` (which it polls now).
fn switch(link: &mut dyn Link, peer: &mut Peer, next: u64) -> Result<(), Error> {
    let (tx, rx) = link.halves();
    send(tx, TAG_SWITCH, &next.to_le_bytes())?;
    let echoed = receive(rx, peer, |tag, payload| {
        tag == TAG_SWITCH && payload == next.to_le_bytes()
    })?;
    if !echoed {
        return Err("the switch's echo is not the switch".into());
    }
    Ok(())
}

/// One round trip of message `seq`, every byte written and checked.
#[inline(always)]
fn round_trip(
    tx: &mut Sender<C, 1>,
    rx: &mut Receiver<C, 1>,
    peer: &mut Peer,
    seq: u64,
    message: &mut [u8],
) -> Result<(), Error> {
    fill(message, seq);
    send(tx, TAG_DATA, message)?;
    let ok = receive(rx, peer, |tag, payload| {
        tag == TAG_DATA && filled_with(payload, seq)
    })?;
    if !ok {
        return Err(format!("round trip {seq}: the echo is not what was sent").into());
    }
    Ok(())
}

/// A block of round trips on `link` for `block`: a few untimed, then timed into `hist` (if
/// any).
fn rt_block(
    link: &mut dyn Link,
    peer: &mut Peer,
    size: usize,
    block: Duration,
    seq: &mut u64,
    mut timer: Option<(&mut Histogram<u64>, f64)>,
) -> Result<(), Error> {
    let mut message = vec![0u8; size];
    let (tx, rx) = link.halves();
    for _ in 0..64 {
        *seq += 1;
        round_trip(tx, rx, peer, *seq, &mut message)?;
    }
    let begin = Instant::now();
    let mut done = 0u64;
    loop {
        *seq += 1;
        let t0 = ticks();
        round_trip(tx, rx, peer, *seq, &mut message)?;
        let t1 = ticks();
        if let Some((hist, ns_per_tick)) = &mut timer {
            hist.saturating_record((t1.wrapping_sub(t0) as f64 * *ns_per_tick).round() as u64);
        }
        done += 1;
        if done.is_multiple_of(64) && begin.elapsed() >= block {
            return Ok(());
        }
    }
}

/// A block of floor round trips (`payload` 0: the 8-byte floor), as [`rt_block`].
fn floor_block(
    floor: &FloorMap,
    peer: &mut Peer,
    payload: usize,
    block: Duration,
    seq: &mut u64,
    mut timer: Option<(&mut Histogram<u64>, f64)>,
) -> Result<(), Error> {
    let mut message = vec![0u8; payload];
    for _ in 0..64 {
        *seq += 1;
        floor_round_trip(floor, peer, *seq, &mut message)?;
    }
    let begin = Instant::now();
    let mut done = 0u64;
    loop {
        *seq += 1;
        let t0 = ticks();
        floor_round_trip(floor, peer, *seq, &mut message)?;
        let t1 = ticks();
        if let Some((hist, ns_per_tick)) = &mut timer {
            hist.saturating_record((t1.wrapping_sub(t0) as f64 * *ns_per_tick).round() as u64);
        }
        done += 1;
        if done.is_multiple_of(64) && begin.elapsed() >= block {
            return Ok(());
        }
    }
}

/// A throughput block: each of `links` keeps `window` 64-byte messages outstanding until
/// `block` has passed, then everything in flight is drained. Returns (echoes, time).
fn throughput_block(
    links: &mut [&mut dyn Link],
    peer: &mut Peer,
    window: u64,
    block: Duration,
) -> Result<(u64, Duration), Error> {
    let mut sent = vec![0u64; links.len()];
    let mut got = vec![0u64; links.len()];
    let mut message = [0u8; 64];
    let begin = Instant::now();
    let mut stopping = false;
    let mut polls = 0u64;
    loop {
        let mut in_flight = 0;
        for (i, link) in links.iter_mut().enumerate() {
            let (tx, rx) = link.halves();
            while !stopping && sent[i] - got[i] < window {
                fill(&mut message, sent[i]);
                send(tx, TAG_DATA, &message)?;
                sent[i] += 1;
            }
            loop {
                let seq = got[i];
                let ok = match rx.front() {
                    Ok(echo) => echo.tag() == TAG_DATA && filled_with(echo.payload(), seq),
                    Err(RecvError::Empty) => break,
                    Err(error) => return Err(error.into()),
                };
                if !ok {
                    return Err(format!("client {i}: echo {seq} is not what was sent").into());
                }
                rx.pop()?;
                got[i] += 1;
            }
            in_flight += sent[i] - got[i];
        }
        if stopping && in_flight == 0 {
            return Ok((got.iter().sum(), begin.elapsed()));
        }
        if !stopping && begin.elapsed() >= block {
            stopping = true;
        }
        polls += 1;
        if polls.is_multiple_of(1 << 20) {
            peer.check_running()?;
        }
    }
}

/// The idle-connections holder of a trial: killed when dropped.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A paired trial's timed results.
struct Paired {
    /// Round trips per (link, size): `CHANNEL`, `SERVER_ONE`, `SERVER_MANY` × `SIZES`.
    rt: Vec<Histogram<u64>>,
    /// Throughput: (echoes, time) of the bare channel and of the 16-client server.
    bare: (u64, Duration),
    server: (u64, Duration),
}

const RT_LINKS: [u64; 6] = [
    FLOOR,
    FLOOR_BYTES,
    CHANNEL,
    SERVER_ONE,
    SERVER_MANY,
    SERVER_ONE_EVERY_PASS,
];

fn rt_index(link: u64, size: usize) -> usize {
    let l = RT_LINKS
        .iter()
        .position(|&x| x == link)
        .expect("a round-trip link");
    let s = SIZES.iter().position(|&x| x == size).expect("a size");
    l * SIZES.len() + s
}

/// Removes a trial's folder when dropped.
struct FolderGuard(PathBuf);

impl Drop for FolderGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn paired_trial(
    config: &Config,
    peer_cpu: Option<usize>,
    ns_per_tick: f64,
) -> Result<Paired, Error> {
    let folder = PathBuf::from("/dev/shm").join(unique_name("server-bench"));
    std::fs::create_dir_all(&folder)?;
    let _guard = FolderGuard(folder.clone());
    let floor = FloorMap::open(&folder.join("floor"), true)?;
    let (tx, rx, mut peer) = create_channel::<C, 1>("server-bench", |name| {
        Peer::spawn(|command| {
            command.env(
                PEER_ENV,
                format!("echo:{}:{name}:{}", cpu_arg(peer_cpu), folder.display()),
            );
        })
    })?;
    let mut bare = Bare(tx, rx);
    let options = ClientOptions::new().login_timeout(Duration::from_secs(10));
    let mut one = Client::<C>::connect(server_folder(&folder, SERVER_ONE), "active", &options)?;
    let mut many = Client::<C>::connect(server_folder(&folder, SERVER_MANY), "active", &options)?;
    let mut sixteen = (0..CLIENTS)
        .map(|i| {
            Client::<C>::connect(
                server_folder(&folder, SERVER_SIXTEEN),
                &format!("t{i}"),
                &options,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut holder = Holder(
        Command::new(std::env::current_exe()?)
            .env(
                PEER_ENV,
                format!(
                    "idle:{}:{}",
                    MANY - 1,
                    server_folder(&folder, SERVER_MANY).display()
                ),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut line = String::new();
    BufReader::new(holder.0.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        return Err("the idle clients' holder did not log in".into());
    }

    // Blocks: (link, size; 0 for throughput), a reference next to each contender.
    let mut blocks: Vec<(u64, usize)> = Vec::new();
    for size in SIZES {
        let floor_link = if size == 8 { FLOOR } else { FLOOR_BYTES };
        blocks.extend([
            (floor_link, size),
            (CHANNEL, size),
            (SERVER_ONE, size),
            (SERVER_MANY, size),
            (SERVER_ONE_EVERY_PASS, size),
        ]);
    }
    blocks.extend([(CHANNEL, 0), (SERVER_SIXTEEN, 0)]);
    let mut result = Paired {
        rt: (0..RT_LINKS.len() * SIZES.len())
            .map(|_| histogram())
            .collect(),
        bare: (0, Duration::ZERO),
        server: (0, Duration::ZERO),
    };
    let mut current = CHANNEL;
    let mut seq = 0u64;
    for cycle in 0..config.cycles {
        let timed = cycle > 0;
        for &(link, size) in &blocks {
            // Between blocks, untimed: the clients' heartbeats (one comparison unless due).
            let now = monotonic_nanos();
            for client in [&mut one, &mut many].into_iter().chain(sixteen.iter_mut()) {
                let _ = client.poll(now)?;
            }
            if is_floor(current) {
                floor_exchange(&floor, &mut peer, SWITCH_BIT | link)?;
            } else {
                let from: &mut dyn Link = match current {
                    CHANNEL => &mut bare,
                    SERVER_ONE | SERVER_ONE_EVERY_PASS => &mut one,
                    SERVER_MANY => &mut many,
                    _ => &mut sixteen[0],
                };
                switch(from, &mut peer, link)?;
            }
            current = link;
            if size == 0 {
                let (count, elapsed) = if link == CHANNEL {
                    throughput_block(
                        &mut [&mut bare],
                        &mut peer,
                        WINDOW * CLIENTS as u64,
                        config.block,
                    )?
                } else {
                    let mut links: Vec<&mut dyn Link> =
                        sixteen.iter_mut().map(|c| c as &mut dyn Link).collect();
                    throughput_block(&mut links, &mut peer, WINDOW, config.block)?
                };
                if timed {
                    let total = if link == CHANNEL {
                        &mut result.bare
                    } else {
                        &mut result.server
                    };
                    total.0 += count;
                    total.1 += elapsed;
                }
                // Each block starts its sequence afresh: nothing is in flight between blocks.
                continue;
            }
            let hist = &mut result.rt[rt_index(link, size)];
            let timer = timed.then_some((hist, ns_per_tick));
            if is_floor(link) {
                let payload = if link == FLOOR { 0 } else { FLOOR_PAYLOAD };
                floor_block(&floor, &mut peer, payload, config.block, &mut seq, timer)?;
                continue;
            }
            let link_ref: &mut dyn Link = match link {
                CHANNEL => &mut bare,
                SERVER_ONE | SERVER_ONE_EVERY_PASS => &mut one,
                _ => &mut many,
            };
            rt_block(link_ref, &mut peer, size, config.block, &mut seq, timer)?;
        }
    }
    // Quit over the link in use.
    if is_floor(current) {
        floor_exchange(&floor, &mut peer, SWITCH_BIT | QUIT)?;
    } else {
        let from: &mut dyn Link = match current {
            CHANNEL => &mut bare,
            SERVER_ONE | SERVER_ONE_EVERY_PASS => &mut one,
            SERVER_MANY => &mut many,
            _ => &mut sixteen[0],
        };
        switch(from, &mut peer, QUIT)?;
    }
    peer.finish()?;
    drop(holder);
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// "median× (min–max)" of per-round ratios.
fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.3}× ({:.3}–{:.3})", median(values), min, max)
}

fn ns(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.1} µs", value / 1000.0)
    } else {
        format!("{value:.0} ns")
    }
}

fn percentiles(hist: &Histogram<u64>) -> [f64; 4] {
    [
        fine_p50(hist),
        hist.value_at_quantile(0.9) as f64,
        hist.value_at_quantile(0.99) as f64,
        hist.value_at_quantile(0.999) as f64,
    ]
}

fn verdict(value: f64, target: f64) -> &'static str {
    if value <= target {
        "PASS"
    } else {
        "MISS"
    }
}

/// Nanoseconds per call of `call`, over `n` calls.
fn time_calls(n: u32, mut call: impl FnMut()) -> f64 {
    let begin = Instant::now();
    for _ in 0..n {
        call();
    }
    begin.elapsed().as_nanos() as f64 / f64::from(n)
}

/// What one idle call costs, in this (single) process: `poll_control` with nobody logging in,
/// `poll_group` with 0, 1 and 64 idle connections (clients of this process, logged in from a
/// thread), each the median of 5 timings.
fn per_call_costs() -> Result<(), Error> {
    let folder = PathBuf::from("/dev/shm").join(unique_name("server-bench-calls"));
    let _guard = FolderGuard(folder.clone());
    let config = ServerConfig::new("calls", &folder)?.groups(1, MANY);
    let mut server = Server::<C>::new(config, |_| Decision::Accept { group: 0 })?;
    let mut clients = Vec::new();
    let mut rows = Vec::new();
    let median_of = |f: &mut dyn FnMut() -> f64| median(&(0..5).map(|_| f()).collect::<Vec<_>>());
    rows.push((
        "poll_control, idle".to_string(),
        median_of(&mut || {
            time_calls(20_000, || {
                std::hint::black_box(server.poll_control(monotonic_nanos()));
            })
        }),
    ));
    for target in [0, 1, MANY] {
        // Log clients in from a thread while this one serves the logins.
        let wanted = target - clients.len();
        let from = clients.len();
        let folder = folder.clone();
        let joiner = std::thread::spawn(move || {
            let options = ClientOptions::new().login_timeout(Duration::from_secs(10));
            (from..from + wanted)
                .map(|i| Client::<C>::connect(&folder, &format!("c{i}"), &options))
                .collect::<Result<Vec<_>, _>>()
        });
        while !joiner.is_finished() {
            let now = monotonic_nanos();
            server.poll_control(now);
            server.poll_group(0, now, |_, _| {});
        }
        clients.extend(joiner.join().map_err(|_| "a login thread panicked")??);
        for _ in 0..100 {
            let now = monotonic_nanos();
            server.poll_control(now);
            server.poll_group(0, now, |_, _| {});
        }
        let per_call = median_of(&mut || {
            time_calls(200_000, || {
                std::hint::black_box(server.poll_group(0, monotonic_nanos(), |_, _| {}));
            })
        });
        rows.push((
            format!("poll_group, {target} idle connection(s), clock read included"),
            per_call,
        ));
    }
    let clock = median_of(&mut || {
        time_calls(1_000_000, || {
            std::hint::black_box(monotonic_nanos());
        })
    });
    rows.push(("monotonic_nanos (the clock read alone)".to_string(), clock));
    println!("## Idle per-call costs (one process, this CPU)");
    println!();
    println!("| call | ns per call |");
    println!("|---|---:|");
    for (name, value) in rows {
        println!("| {name} | {value:.1} |");
    }
    println!();
    drop(clients);
    Ok(())
}

/// One histogram per round.
type Hists<'a> = &'a [&'a Histogram<u64>];

/// Prints one row of per-round ratios `num[r] ÷ den[r]` at each percentile.
fn ratio_row(
    name: &str,
    size: usize,
    num: &[&Histogram<u64>],
    den: &[&Histogram<u64>],
    target: Option<f64>,
) {
    let per_round: Vec<[f64; 4]> = num
        .iter()
        .zip(den)
        .map(|(a, b)| {
            let (a, b) = (percentiles(a), percentiles(b));
            [a[0] / b[0], a[1] / b[1], a[2] / b[2], a[3] / b[3]]
        })
        .collect();
    let col = |i: usize| spread(&per_round.iter().map(|p| p[i]).collect::<Vec<_>>());
    let target = target.map_or(String::new(), |t| {
        let p50 = median(&per_round.iter().map(|p| p[0]).collect::<Vec<_>>());
        format!("p50 ≤ {t:.2}×: {}", verdict(p50, t))
    });
    println!(
        "| {name} | {size} B | {} | {} | {} | {} | {target} |",
        col(0),
        col(1),
        col(2),
        col(3)
    );
}

fn main() -> Result<(), Error> {
    run_peer_if_asked();
    let config = Config::from_env();
    let allowed = allowed_cpus().unwrap_or_default();
    let peer_cpu = match allowed[..] {
        [mine, theirs, ..] => {
            pin_to(mine)?;
            eprintln!(
                "measuring process (the clients) on CPU {mine}, server process on CPU {theirs}"
            );
            Some(theirs)
        }
        _ => {
            eprintln!("NOTE: fewer than 2 CPUs allowed: unpinned, figures mean little");
            None
        }
    };
    if std::env::var("SHM_SERVER_BENCH_ONLY").is_ok_and(|v| v == "calls") {
        // The single-process part alone (e.g. under `valgrind --tool=callgrind`).
        return per_call_costs();
    }
    let ns_per_tick = calibrate(Duration::from_millis(50));
    println!("# shm-server report");
    println!();
    println!("- CPU: {} ({} allowed)", cpu_model(), allowed.len());
    println!("- load before: {}", load_average());
    println!(
        "- {} rounds; per round one paired trial (fresh processes) of {} cycles of {} ms blocks \
         of every contender (the first cycle untimed)",
        config.rounds,
        config.cycles,
        config.block.as_millis()
    );
    println!(
        "- server thread: poll_control {}, poll_group every pass (the row \"poll_control every \
         pass\": both on every pass)",
        if config.control_ns == 0 {
            "every pass".to_string()
        } else {
            format!("at most every {} ns", config.control_ns)
        }
    );
    let started = Instant::now();
    let mut trials = Vec::new();
    for round in 0..config.rounds {
        let trial = paired_trial(&config, peer_cpu, ns_per_tick)?;
        eprintln!(
            "round {}: floor 8 B p50 {}, 64 B {}; channel 64 B {}, server 64 B {} ({:.1} s)",
            round + 1,
            ns(fine_p50(&trial.rt[rt_index(FLOOR, 8)])),
            ns(fine_p50(&trial.rt[rt_index(FLOOR_BYTES, 64)])),
            ns(fine_p50(&trial.rt[rt_index(CHANNEL, 64)])),
            ns(fine_p50(&trial.rt[rt_index(SERVER_ONE, 64)])),
            started.elapsed().as_secs_f64()
        );
        trials.push(trial);
    }
    println!("- load after: {}", load_average());
    println!();

    // Percentiles over the whole run.
    println!("## Round trips (all rounds merged)");
    println!();
    println!("| contender | size | p50 | p90 | p99 | p99.9 | round trips |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let merge = |hists: &mut dyn Iterator<Item = &Histogram<u64>>| {
        let mut all = histogram();
        for hist in hists {
            all.add(hist).expect("same bounds");
        }
        all
    };
    let row = |name: &str, size: usize, hist: &Histogram<u64>| {
        let [p50, p90, p99, p999] = percentiles(hist);
        println!(
            "| {name} | {size} B | {} | {} | {} | {} | {} |",
            ns(p50),
            ns(p90),
            ns(p99),
            ns(p999),
            hist.len()
        );
    };
    for size in SIZES {
        let (floor_link, floor_name) = if size == 8 {
            (FLOOR, "raw floor (an atomic each way)")
        } else {
            (
                FLOOR_BYTES,
                "raw floor (same bytes: payload + seq each way)",
            )
        };
        for (link, name) in [
            (floor_link, floor_name),
            (CHANNEL, "bare channel echo"),
            (SERVER_ONE, "server echo, 1 connection"),
            (SERVER_MANY, "server echo, 64 connections (63 idle)"),
            (
                SERVER_ONE_EVERY_PASS,
                "server echo, 1 connection, poll_control every pass",
            ),
        ] {
            let hist = merge(&mut trials.iter().map(|t| &t.rt[rt_index(link, size)]));
            row(name, size, &hist);
        }
    }
    println!();

    println!("## Ratios (per round, then median and range over the rounds)");
    println!();
    println!("| ratio | size | p50 | p90 | p99 | p99.9 | target |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for size in SIZES {
        let per = |link: u64| -> Vec<&Histogram<u64>> {
            trials.iter().map(|t| &t.rt[rt_index(link, size)]).collect()
        };
        let floor = per(if size == 8 { FLOOR } else { FLOOR_BYTES });
        let (one, many, channel) = (per(SERVER_ONE), per(SERVER_MANY), per(CHANNEL));
        let every = per(SERVER_ONE_EVERY_PASS);
        let rows: [(&str, Hists<'_>, Hists<'_>, Option<f64>); 6] = [
            ("server (1 conn) ÷ bare channel", &one, &channel, Some(1.10)),
            ("server (1 conn) ÷ raw floor", &one, &floor, None),
            ("bare channel ÷ raw floor", &channel, &floor, None),
            (
                "server (64 conns) ÷ server (1 conn)",
                &many,
                &one,
                Some(1.5),
            ),
            ("server (64 conns) ÷ bare channel", &many, &channel, None),
            (
                "server (1 conn, poll_control every pass) ÷ bare channel",
                &every,
                &channel,
                Some(1.10),
            ),
        ];
        for (name, num, den, target) in rows {
            ratio_row(name, size, num, den, target);
        }
    }
    println!();

    println!("## Throughput (64 B echoes)");
    println!();
    println!("| contender | in flight | echoes/s (median over rounds, range) |");
    println!("|---|---:|---:|");
    let rate = |(count, elapsed): (u64, Duration)| count as f64 / elapsed.as_secs_f64();
    let bare: Vec<f64> = trials.iter().map(|t| rate(t.bare)).collect();
    let server: Vec<f64> = trials.iter().map(|t| rate(t.server)).collect();
    let range = |values: &[f64]| {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!(
            "{:.2} M/s ({:.2}–{:.2})",
            median(values) / 1e6,
            min / 1e6,
            max / 1e6
        )
    };
    println!(
        "| bare channel, one pair | {} | {} |",
        WINDOW * CLIENTS as u64,
        range(&bare)
    );
    println!(
        "| server, {CLIENTS} clients × window {WINDOW} | {} | {} |",
        WINDOW * CLIENTS as u64,
        range(&server)
    );
    let ratios: Vec<f64> = server.iter().zip(&bare).map(|(s, b)| s / b).collect();
    println!(
        "| server ÷ bare channel (per round) | | {} |",
        spread(&ratios)
    );
    println!();
    per_call_costs()?;
    println!(
        "Run took {:.1} s. Ratios compare figures of the same round; on a shared 2-vCPU guest \
         absolute times move with the vCPUs' placement and other work.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
