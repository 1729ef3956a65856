//! Machinery shared by the two bench binaries (`tcp`, criterion; `report`, interleaved rounds):
//! the contenders, the peer process, and the round-trip and streaming drivers. Every contender
//! goes through the same driver code and the same peer, so a difference between two of them is a
//! difference between the transports.
//!
//! Cross-process, as `shm-channel`'s benches: the bench binary re-executes itself
//! ([`std::env::current_exe`]) with [`PEER_ENV`] describing the peer's job, and
//! [`run_peer_if_asked`], called first thing in `main`, runs that job and exits. One peer process
//! per trial, pinned to the second allowed CPU (the measuring process to the first); each
//! process has one thread and busy-polls.
//!
//! **Paired trials.** A trial of the report connects its peer twice, by raw TCP and by shm-tcp,
//! and alternates short blocks on the two links ([`BLOCK`] each): the reference and the
//! contender then run in the same two processes, on the same two CPUs, under the same load,
//! within milliseconds of each other, and the trial's ratio compares like with like. (Trials of
//! one contender each, in turn, saw the raw reference's p50 move by half between two trials on
//! this project's 2-vCPU guest: more than the 5% the target allows.) At each block's end the
//! parent tells the peer to switch links and waits for its answer, so only one link is ever
//! polled, and each block starts with nothing in flight. The criterion bench runs one link per
//! trial.
//!
//! The raw TCP reference is `shm-channel`'s (`peers::Socket`: loopback, `TCP_NODELAY`,
//! non-blocking, `read` retried in a loop), through the very file `shm-channel`'s benches and the
//! `pingpong` example use (`shm-channel/benches/common/peers.rs`, included by path); the
//! shm-tcp side is [`ours`], which the example includes as well.

pub mod ours;
// The channel's attach handshake, the raw floors and the placement rule are for `shm-channel`'s
// benches and the example; these benches use the processes, pinning, sockets and message
// contents only.
#[allow(dead_code, unused_macros)]
#[path = "../../../shm-channel/benches/common/peers.rs"]
mod peers;

use std::hint::black_box;
use std::io::{self, Read};
use std::net::Shutdown;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use shm_tcp::{Acceptor, ConnId, Connection, Durability};

use peers::{allowed_cpus, cpu_arg, fill, filled_with, pin_to, pin_to_arg, Peer, Socket};
pub use peers::{cpu_model, load_average, Error, Mode};

/// The environment variable naming the peer's job (internal: set only by the parent).
pub const PEER_ENV: &str = "SHM_TCP_BENCH_PEER";

/// The folder under which each trial's state folder is made, unless `SHM_TCP_BENCH_DIR` names
/// another: the system's temporary folder (`/tmp`), a disk on most machines, so that
/// [`Durability::PowerLoss`]'s `msync` reaches one. Not `/dev/shm`, where it would be free.
pub const DIR_ENV: &str = "SHM_TCP_BENCH_DIR";

/// The send queue's capacity (each side's persisted ring), unless [`QUEUE_ENV`] says `64`: 1 MiB.
/// The queue is the stream's window: a sender whose messages the peer has not acknowledged yet
/// stops at `Full`, where raw TCP's sender keeps going into the kernel's socket buffers (which
/// grow to megabytes). At a load of 1 the two sizes measure alike; with other work at a load of
/// 7-9 on this project's 2-vCPU guest, 64 KiB stalled the sender for up to 8-32 ms at a time,
/// waiting for the acks of a consumer that was not running (BENCHMARKS.md).
pub const QUEUE: usize = 1 << 20;
/// The capacity `SHM_TCP_BENCH_QUEUE_KIB=64` selects.
pub const SMALL_QUEUE: usize = 1 << 16;
/// Selects the send queue's capacity: `64` (KiB) or `1024` (the default).
pub const QUEUE_ENV: &str = "SHM_TCP_BENCH_QUEUE_KIB";

/// The send queue's capacity this run uses ([`QUEUE_ENV`]); the peer inherits the variable.
pub fn queue_bytes() -> usize {
    match std::env::var(QUEUE_ENV).as_deref() {
        Ok("64") => SMALL_QUEUE,
        _ => QUEUE,
    }
}

/// Messages of a batch: `push_more` this many times, then one `flush_queued`; raw TCP writes this
/// many messages with one `write`.
pub const BATCH: usize = 64;

/// Round trips before timing starts on each link (the power-loss contenders: [`SYNC_WARMUP`]).
pub const WARMUP_ROUND_TRIPS: u64 = 2_000;
/// Messages of the untimed first block of a stream on each link (a multiple of [`BATCH`]).
pub const WARMUP_MESSAGES: u64 = 1_024;
/// Warm-up of the power-loss contenders, whose every push and pop waits for the disk (a
/// multiple of [`BATCH`]).
pub const SYNC_WARMUP: u64 = 64;
/// A paired trial's block on one link, before it switches to the other.
pub const BLOCK: Duration = Duration::from_millis(25);

/// The raw consumer's read buffer: as large as shm-tcp's receive buffer (1 MiB), so both read
/// whatever has arrived with one `read`.
const RAW_READ: usize = 1 << 20;

/// shm-tcp message tags: a message of the test; the end of a block (ping-pong: switch links;
/// stream: report, then switch); the stream's report; the end of the trial.
const TAG_DATA: u16 = 1;
const TAG_SWITCH: u16 = 2;
const TAG_REPORT: u16 = 3;
const TAG_QUIT: u16 = 4;
/// The same, in a raw message's first word (where a message of the test has its sequence
/// number, from 0 up).
const SWITCH_MARK: u64 = u64::MAX - 1;
const QUIT_MARK: u64 = u64::MAX;

// ---------------------------------------------------------------------------------------------
// Contenders
// ---------------------------------------------------------------------------------------------

/// What carries the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// Raw TCP loopback: fixed-size messages, no framing, nothing persisted.
    Raw,
    /// shm-tcp: a [`Connection`] (frames, sequence numbers, a persisted send queue, acks).
    Ours,
}

/// Where shm-tcp's state files live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateDir {
    /// A fresh folder under [`DIR_ENV`] or the system's temporary folder.
    Disk,
    /// A fresh folder in `/dev/shm` (tmpfs: the page cache only).
    Shm,
}

/// One contender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contender {
    /// What carries the messages.
    pub wire: Wire,
    /// Messages per `write` (raw) or per `flush_queued` (shm-tcp, `push_more` before): 1 or
    /// [`BATCH`]. Round trips send one at a time.
    pub batch: usize,
    /// shm-tcp's durability (both sides).
    pub durability: Durability,
    /// shm-tcp's state folder.
    pub dir: StateDir,
}

const fn contender(wire: Wire, batch: usize, durability: Durability, dir: StateDir) -> Contender {
    Contender {
        wire,
        batch,
        durability,
        dir,
    }
}

/// Raw TCP, one message per `write`: every ratio's reference.
pub const RAW: Contender = contender(Wire::Raw, 1, Durability::ProcessCrash, StateDir::Disk);
/// Raw TCP, [`BATCH`] messages per `write` (streams).
pub const RAW_BATCH: Contender =
    contender(Wire::Raw, BATCH, Durability::ProcessCrash, StateDir::Disk);
/// shm-tcp as configured by default: state on a disk, [`Durability::ProcessCrash`].
pub const OURS: Contender = contender(Wire::Ours, 1, Durability::ProcessCrash, StateDir::Disk);
/// The same, state in `/dev/shm`.
pub const OURS_SHM: Contender = contender(Wire::Ours, 1, Durability::ProcessCrash, StateDir::Shm);
/// shm-tcp with [`Durability::PowerLoss`]: an `msync` after every push and every pop.
pub const OURS_SYNC: Contender = contender(Wire::Ours, 1, Durability::PowerLoss, StateDir::Disk);
/// shm-tcp batching: `push_more` × [`BATCH`], then `flush_queued` (streams).
pub const OURS_BATCH: Contender =
    contender(Wire::Ours, BATCH, Durability::ProcessCrash, StateDir::Disk);
/// shm-tcp batching with [`Durability::PowerLoss`] (streams).
pub const OURS_SYNC_BATCH: Contender =
    contender(Wire::Ours, BATCH, Durability::PowerLoss, StateDir::Disk);

/// The round-trip contenders, the reference first.
pub const ROUND_TRIP_CONTENDERS: [Contender; 4] = [RAW, OURS, OURS_SHM, OURS_SYNC];

/// The streaming contenders, the references first.
pub const STREAM_CONTENDERS: [Contender; 6] =
    [RAW, RAW_BATCH, OURS, OURS_BATCH, OURS_SYNC, OURS_SYNC_BATCH];

impl Contender {
    /// The name in tables and criterion ids, and the code in the peer's job description.
    fn names(self) -> (&'static str, &'static str) {
        match (self.wire, self.batch > 1, self.durability, self.dir) {
            (Wire::Raw, false, _, _) => ("raw TCP (non-blocking, polled)", "raw"),
            (Wire::Raw, true, _, _) => ("raw TCP, 64 messages per write", "raw64"),
            (Wire::Ours, false, Durability::ProcessCrash, StateDir::Disk) => {
                ("shm-tcp (state on disk)", "ours")
            }
            (Wire::Ours, false, Durability::ProcessCrash, StateDir::Shm) => {
                ("shm-tcp (state in /dev/shm)", "ours-shm")
            }
            (Wire::Ours, false, _, _) => ("shm-tcp PowerLoss (msync, on disk)", "ours-sync"),
            (Wire::Ours, true, Durability::ProcessCrash, _) => {
                ("shm-tcp, push_more ×64 + flush_queued", "ours64")
            }
            (Wire::Ours, true, _, _) => ("shm-tcp PowerLoss, push_more ×64 + flush", "ours-sync64"),
        }
    }

    /// Name in tables and criterion ids.
    pub fn label(self) -> &'static str {
        self.names().0
    }

    /// The code in the peer's job description and in `SHM_BENCH_CONTENDERS`.
    pub fn code(self) -> &'static str {
        self.names().1
    }

    fn from_code(code: &str) -> Result<Self, Error> {
        ROUND_TRIP_CONTENDERS
            .into_iter()
            .chain(STREAM_CONTENDERS)
            .find(|c| c.code() == code)
            .ok_or_else(|| format!("unknown contender {code:?}").into())
    }

    /// Whether every push and pop waits for the disk.
    pub fn syncs(self) -> bool {
        self.wire == Wire::Ours && self.durability == Durability::PowerLoss
    }

    /// The warm-up a trial of this contender starts with: `normal`, or at most [`SYNC_WARMUP`].
    pub fn warmup(self, normal: u64) -> u64 {
        if self.syncs() {
            normal.min(SYNC_WARMUP)
        } else {
            normal
        }
    }
}

/// What a trial does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Test {
    /// The peer echoes every message until told to stop.
    PingPong,
    /// The peer consumes messages, then reports how many and how long.
    Stream,
}

// ---------------------------------------------------------------------------------------------
// CPUs and folders
// ---------------------------------------------------------------------------------------------

/// Where the two processes run, chosen once.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    /// The parent's and the peer's CPU, when two are allowed.
    pub cpus: Option<(usize, usize)>,
    /// `false` with a single allowed CPU: poll loops yield instead of spinning.
    pub spin: bool,
    /// How many CPUs were allowed.
    // Printed by the report only.
    #[allow(dead_code)]
    pub allowed: usize,
}

/// Chooses the placement and pins this (the measuring) process; prints a note once.
pub fn placement() -> Placement {
    static PLACEMENT: OnceLock<Placement> = OnceLock::new();
    *PLACEMENT.get_or_init(|| {
        let allowed = allowed_cpus().unwrap_or_default();
        let cpus = match allowed[..] {
            [mine, theirs, ..] => match pin_to(mine) {
                Ok(()) => Some((mine, theirs)),
                Err(error) => {
                    eprintln!("shm-tcp benches: NOTE: {error}; running unpinned");
                    None
                }
            },
            _ => None,
        };
        match cpus {
            Some((a, b)) => eprintln!(
                "shm-tcp benches: measuring process on CPU {a}, peer process on CPU {b} (of {} \
                 allowed)",
                allowed.len()
            ),
            None => eprintln!(
                "shm-tcp benches: NOTE: not pinned ({} CPU(s) allowed); with one CPU the busy \
                 loops yield and the numbers mean little",
                allowed.len()
            ),
        }
        Placement {
            cpus,
            spin: allowed.len() >= 2,
            allowed: allowed.len(),
        }
    })
}

/// The folder under which the state folders of [`StateDir::Disk`] trials are made.
pub fn disk_base() -> PathBuf {
    std::env::var_os(DIR_ENV).map_or_else(std::env::temp_dir, PathBuf::from)
}

/// A fresh state folder for one trial, removed when dropped.
fn state_dir(dir: StateDir) -> Result<tempfile::TempDir, Error> {
    let base = match dir {
        StateDir::Disk => disk_base(),
        StateDir::Shm => PathBuf::from("/dev/shm"),
    };
    Ok(tempfile::Builder::new()
        .prefix("shm-tcp-bench-")
        .tempdir_in(base)?)
}

/// Between two polls that found nothing: nothing while spinning (each poll is a system call
/// already), a yield on a single CPU.
#[inline(always)]
fn relax(spin: bool) {
    if !spin {
        std::thread::yield_now();
    }
}

// ---------------------------------------------------------------------------------------------
// Timing hooks
// ---------------------------------------------------------------------------------------------

/// How the ping-pong driver times individual round trips: [`NoTimer`] for criterion (which
/// times the whole trial), a histogram-recording timer in the report.
pub trait RoundTripTimer {
    /// A timestamp before a round trip (`None`: not timed).
    fn start(&mut self) -> Option<Instant>;
    /// After the round trip that started at `t0`.
    fn stop(&mut self, t0: Option<Instant>);
}

/// Times nothing (criterion times the trial).
// Used by the criterion bench only.
#[allow(dead_code)]
pub struct NoTimer;

impl RoundTripTimer for NoTimer {
    #[inline(always)]
    fn start(&mut self) -> Option<Instant> {
        None
    }
    #[inline(always)]
    fn stop(&mut self, _t0: Option<Instant>) {}
}

// ---------------------------------------------------------------------------------------------
// Drivers (measuring process)
// ---------------------------------------------------------------------------------------------

/// What one link measured in a trial.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measured {
    /// Timed round trips, or messages streamed after the warm-up.
    pub count: u64,
    /// Their total time.
    pub elapsed: Duration,
}

impl std::ops::AddAssign for Measured {
    fn add_assign(&mut self, other: Self) {
        self.count += other.count;
        self.elapsed += other.elapsed;
    }
}

/// An instant no trial reaches.
fn never() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// One ping-pong trial of `size`-byte messages over one link against a fresh peer: `warmup`
/// untimed round trips, then up to `n` timed ones, stopping early once `budget` has passed.
/// Returns the timed round trips and their total time. (The criterion bench's; the report pairs
/// links, [`paired_round_trips`].)
// The criterion bench's only.
#[allow(dead_code)]
pub fn round_trips<M: RoundTripTimer>(
    contender: Contender,
    size: usize,
    warmup: u64,
    n: u64,
    budget: Duration,
    timer: &mut M,
) -> Result<(u64, Duration), Error> {
    if queue_bytes() == SMALL_QUEUE {
        single_round_trips::<SMALL_QUEUE, M>(contender, size, warmup, n, budget, timer)
    } else {
        single_round_trips::<QUEUE, M>(contender, size, warmup, n, budget, timer)
    }
}

#[allow(dead_code)]
fn single_round_trips<const C: usize, M: RoundTripTimer>(
    contender: Contender,
    size: usize,
    warmup: u64,
    n: u64,
    budget: Duration,
    timer: &mut M,
) -> Result<(u64, Duration), Error> {
    let spin = placement().spin;
    let (raw, ours) = match contender.wire {
        Wire::Raw => (Some(contender), None),
        Wire::Ours => (None, Some(contender)),
    };
    let mut session = Session::<C>::start(raw, ours, Test::PingPong, size, spin)?;
    let mut message = vec![0u8; size];
    let mut seq = 1;
    let warmup = contender.warmup(warmup);
    let until = Instant::now().checked_add(budget).unwrap_or_else(never);
    let measured = match (&mut session.raw, &mut session.ours) {
        (Some(link), _) => {
            rt_block(link, &mut seq, &mut message, never(), warmup, &mut NoTimer)?;
            let measured = rt_block(link, &mut seq, &mut message, until, n, timer)?;
            link.quit()?;
            measured
        }
        (None, Some(link)) => {
            rt_block(link, &mut seq, &mut message, never(), warmup, &mut NoTimer)?;
            let measured = rt_block(link, &mut seq, &mut message, until, n, timer)?;
            link.quit()?;
            measured
        }
        (None, None) => unreachable!("a session has a link"),
    };
    session.finish()?;
    Ok((measured.count, measured.elapsed))
}

/// One paired ping-pong trial (module docs): the raw `reference` and the shm-tcp `contender` to
/// one peer, `warmup` untimed round trips on each, then blocks of [`BLOCK`] on each in turn
/// until `budget` has passed. Every round trip is timed, into `timers[0]` (the reference) or
/// `timers[1]`. Returns what each measured.
pub fn paired_round_trips<M: RoundTripTimer>(
    reference: Contender,
    contender: Contender,
    size: usize,
    warmup: u64,
    budget: Duration,
    timers: &mut [M; 2],
) -> Result<[Measured; 2], Error> {
    if queue_bytes() == SMALL_QUEUE {
        paired_rt::<SMALL_QUEUE, M>(reference, contender, size, warmup, budget, timers)
    } else {
        paired_rt::<QUEUE, M>(reference, contender, size, warmup, budget, timers)
    }
}

fn paired_rt<const C: usize, M: RoundTripTimer>(
    reference: Contender,
    contender: Contender,
    size: usize,
    warmup: u64,
    budget: Duration,
    timers: &mut [M; 2],
) -> Result<[Measured; 2], Error> {
    assert_eq!((reference.wire, contender.wire), (Wire::Raw, Wire::Ours));
    let spin = placement().spin;
    let mut session =
        Session::<C>::start(Some(reference), Some(contender), Test::PingPong, size, spin)?;
    let (Some(raw), Some(ours)) = (&mut session.raw, &mut session.ours) else {
        unreachable!("a paired session has both links");
    };
    let mut message = vec![0u8; size];
    let mut seq = 1;
    let [raw_timer, ours_timer] = timers;
    rt_block(raw, &mut seq, &mut message, never(), warmup, &mut NoTimer)?;
    raw.switch()?;
    let warmup = contender.warmup(warmup);
    rt_block(ours, &mut seq, &mut message, never(), warmup, &mut NoTimer)?;
    ours.switch()?;
    let mut measured = [Measured::default(); 2];
    let begin = Instant::now();
    while begin.elapsed() < budget {
        let until = Instant::now() + BLOCK;
        measured[0] += rt_block(raw, &mut seq, &mut message, until, u64::MAX, raw_timer)?;
        raw.switch()?;
        let until = Instant::now() + BLOCK;
        measured[1] += rt_block(ours, &mut seq, &mut message, until, u64::MAX, ours_timer)?;
        ours.switch()?;
    }
    raw.quit()?;
    session.finish()?;
    Ok(measured)
}

/// Up to `max` round trips on `link`, each timed by `timer`, until `until` (checked every 4).
#[inline(always)]
fn rt_block<L: Link, M: RoundTripTimer>(
    link: &mut L,
    seq: &mut u64,
    message: &mut [u8],
    until: Instant,
    max: u64,
    timer: &mut M,
) -> Result<Measured, Error> {
    let begin = Instant::now();
    let mut done = 0;
    while done < max {
        let t0 = timer.start();
        link.round_trip(*seq, message)?;
        timer.stop(t0);
        *seq += 1;
        done += 1;
        if done % 4 == 0 && Instant::now() >= until {
            break;
        }
    }
    Ok(Measured {
        count: done,
        elapsed: begin.elapsed(),
    })
}

/// One paired streaming trial (module docs) of `size`-byte messages: the raw `reference` and
/// the shm-tcp `contender` to one peer, an untimed first block on each (the contender's
/// warm-up: [`WARMUP_MESSAGES`], or [`SYNC_WARMUP`]), then blocks of [`BLOCK`] on each in turn
/// until `budget` has passed. A block's time runs from its first message to the consumer's
/// receiving its end (`CLOCK_MONOTONIC`, one clock for both processes), so it holds the whole
/// transfer, buffers drained, whatever their depth (raw TCP's are the kernel's socket buffers,
/// shm-tcp's its send queue as well); the consumer reads every word of every message. Returns
/// what each link measured.
pub fn paired_stream(
    reference: Contender,
    contender: Contender,
    size: usize,
    budget: Duration,
) -> Result<[Measured; 2], Error> {
    if queue_bytes() == SMALL_QUEUE {
        paired_stream_in::<SMALL_QUEUE>(reference, contender, size, budget)
    } else {
        paired_stream_in::<QUEUE>(reference, contender, size, budget)
    }
}

fn paired_stream_in<const C: usize>(
    reference: Contender,
    contender: Contender,
    size: usize,
    budget: Duration,
) -> Result<[Measured; 2], Error> {
    assert_eq!((reference.wire, contender.wire), (Wire::Raw, Wire::Ours));
    assert!(size >= 8, "stream messages carry an 8-byte sequence number");
    let spin = placement().spin;
    let mut session =
        Session::<C>::start(Some(reference), Some(contender), Test::Stream, size, spin)?;
    let (Some(raw), Some(ours)) = (&mut session.raw, &mut session.ours) else {
        unreachable!("a paired session has both links");
    };
    let mut message = vec![0u8; size];
    let mut seq = 0;
    // A power-loss sender takes about a millisecond per message: it looks at the clock after
    // each one, the others at each batch's end.
    let every = if contender.syncs() { 1 } else { BATCH as u64 };
    let batch = BATCH as u64;
    stream_block(raw, &mut seq, &mut message, None, WARMUP_MESSAGES, batch)?;
    let warmup = contender.warmup(WARMUP_MESSAGES);
    stream_block(ours, &mut seq, &mut message, None, warmup, every)?;
    let mut measured = [Measured::default(); 2];
    let begin = Instant::now();
    while begin.elapsed() < budget {
        let until = Some(Instant::now() + BLOCK);
        measured[0] += stream_block(raw, &mut seq, &mut message, until, u64::MAX, batch)?;
        let until = Some(Instant::now() + BLOCK);
        measured[1] += stream_block(ours, &mut seq, &mut message, until, u64::MAX, every)?;
    }
    raw.quit()?;
    session.finish()?;
    Ok(measured)
}

/// Up to `max` messages on `link`, until `until` (checked every `every` messages), then the
/// block's end; the consumer's report gives the count (checked) and the end's arrival.
#[inline(always)]
fn stream_block<L: Link>(
    link: &mut L,
    seq: &mut u64,
    message: &mut [u8],
    until: Option<Instant>,
    max: u64,
    every: u64,
) -> Result<Measured, Error> {
    let start = ours::now();
    let mut sent = 0;
    while sent < max {
        link.send(*seq, message)?;
        *seq += 1;
        sent += 1;
        if sent % every == 0 && until.is_some_and(|until| Instant::now() >= until) {
            break;
        }
    }
    let (count, end) = link.end_block()?;
    if count != sent {
        return Err(format!("the consumer counted {count} of {sent} messages").into());
    }
    Ok(Measured {
        count,
        elapsed: Duration::from_nanos(end.saturating_sub(start)),
    })
}

/// Writes `seq` into the first word of `message` (streams; a round trip [`fill`]s all of it).
#[inline(always)]
fn stamp(message: &mut [u8], seq: u64) {
    message[..8].copy_from_slice(&seq.to_le_bytes());
}

/// The sequence number in the first word of `payload`.
#[inline(always)]
fn seq_of(payload: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&payload[..8]);
    u64::from_le_bytes(word)
}

/// Reads every word of a consumed payload (shm-tcp delivers in place: a consumer that ignored
/// the bytes would flatter it), returning the first.
#[inline(always)]
fn consume(payload: &[u8]) -> u64 {
    let mut fold = 0u64;
    for word in payload.chunks_exact(8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        fold ^= u64::from_le_bytes(bytes);
    }
    black_box(fold);
    seq_of(payload)
}

/// A block's report: the messages consumed and when the block's end arrived ([`ours::now`]).
fn report_bytes(count: u64, end: u64) -> [u8; 16] {
    let mut report = [0u8; 16];
    report[..8].copy_from_slice(&count.to_le_bytes());
    report[8..].copy_from_slice(&end.to_le_bytes());
    report
}

/// The reading of [`report_bytes`].
fn read_report(report: &[u8]) -> (u64, u64) {
    (seq_of(&report[..8]), seq_of(&report[8..16]))
}

/// One link of a trial, parent side.
trait Link {
    /// Ping-pong: one round trip of message `seq`, every byte of the echo checked.
    fn round_trip(&mut self, seq: u64, message: &mut [u8]) -> Result<(), Error>;
    /// Ping-pong: tells the peer to switch to the other link, and waits for its answer.
    fn switch(&mut self) -> Result<(), Error>;
    /// Stream: sends message `seq`.
    fn send(&mut self, seq: u64, message: &mut [u8]) -> Result<(), Error>;
    /// Stream: writes what waits and the block's end, and returns the consumer's report
    /// ([`read_report`]); the consumer then switches to the other link.
    fn end_block(&mut self) -> Result<(u64, u64), Error>;
    /// Tells the peer to exit (on the link it polls).
    fn quit(&mut self) -> Result<(), Error>;
}

/// The links of one trial and their peer, which connects to each that is asked for.
struct Session<const C: usize> {
    // First, so that an error kills the peer before the state folder goes.
    peer: Peer,
    raw: Option<RawLink>,
    ours: Option<OursLink<C>>,
}

impl<const C: usize> Session<C> {
    /// Listens on each link asked for, starts the peer, and waits for its connections.
    fn start(
        raw: Option<Contender>,
        ours: Option<Contender>,
        test: Test,
        size: usize,
        spin: bool,
    ) -> Result<Self, Error> {
        let listening = match ours {
            Some(contender) => {
                let dir = state_dir(contender.dir)?;
                let options = ours::options::<C>(dir.path(), contender.durability);
                let acceptor = ours::bind::<C>(&options)?;
                let address = ours::address(acceptor.local_addr().port(), dir.path());
                Some((contender, dir, acceptor, address))
            }
            None => None,
        };
        let ours_address = listening.as_ref().map_or("-", |l| l.3.as_str());
        let spawn = |port: &str| spawn_peer(raw, ours, test, size, port, ours_address);
        let (socket, mut peer) = match raw {
            Some(_) => {
                let (socket, peer) = Socket::accept_tcp(spawn)?;
                (Some(socket), peer)
            }
            None => (None, spawn("-")?),
        };
        let ours = match listening {
            Some((contender, dir, mut acceptor, _)) => {
                let id = ours::await_login(&mut acceptor, || peer.check_running())?;
                Some(OursLink {
                    acceptor,
                    id,
                    poller: ours::Poller::new(),
                    batch: contender.batch,
                    queued: 0,
                    spin,
                    _dir: dir,
                })
            }
            None => None,
        };
        let raw = match (raw, socket) {
            (Some(contender), Some(socket)) => Some(RawLink::new(socket, contender, size, spin)?),
            _ => None,
        };
        Ok(Self { peer, raw, ours })
    }

    /// Waits for the peer, told to quit, to exit; then the links and the state folder go.
    fn finish(mut self) -> Result<(), Error> {
        if let Some(raw) = &self.raw {
            raw.shutdown();
        }
        self.peer.finish()
    }
}

/// Starts the peer process of one trial, its job described in [`PEER_ENV`].
fn spawn_peer(
    raw: Option<Contender>,
    ours: Option<Contender>,
    test: Test,
    size: usize,
    raw_port: &str,
    ours_address: &str,
) -> Result<Peer, Error> {
    let placement = placement();
    let code = |c: Option<Contender>| c.map_or("-", Contender::code);
    let spec = format!(
        "{},{},{},{size},{},{},{raw_port},{ours_address}",
        code(raw),
        code(ours),
        match test {
            Test::PingPong => "pingpong",
            Test::Stream => "stream",
        },
        u8::from(placement.spin),
        cpu_arg(placement.cpus.map(|(_, theirs)| theirs)),
    );
    Peer::spawn(|command| {
        command.env(PEER_ENV, spec).stdout(Stdio::null());
    })
}

// --- raw TCP ---

/// Raw TCP loopback, parent side: `peers::Socket`, non-blocking. Messages have a fixed size, so
/// no framing; a batch is [`BATCH`] messages in one buffer, one `write_all`.
struct RawLink {
    socket: Socket,
    echo: Vec<u8>,
    batch: Vec<u8>,
    per_write: usize,
    size: usize,
    spin: bool,
}

impl RawLink {
    fn new(socket: Socket, contender: Contender, size: usize, spin: bool) -> Result<Self, Error> {
        socket.set_mode(Mode::Busy)?;
        Ok(Self {
            socket,
            echo: vec![0u8; size],
            batch: Vec::with_capacity(size * (contender.batch + 1)),
            per_write: contender.batch,
            size,
            spin,
        })
    }

    /// Writes one message whose first word is `mark`.
    fn mark(&mut self, mark: u64) -> Result<(), Error> {
        let spin = self.spin;
        let mut message = vec![0u8; self.size];
        fill(&mut message, mark);
        self.socket.write_all(&message, || relax(spin))?;
        Ok(())
    }

    fn shutdown(&self) {
        if let Socket::Tcp(stream) = &self.socket {
            let _ = stream.shutdown(Shutdown::Write);
        }
    }
}

impl Link for RawLink {
    #[inline(always)]
    fn round_trip(&mut self, seq: u64, message: &mut [u8]) -> Result<(), Error> {
        let spin = self.spin;
        fill(message, seq);
        self.socket.write_all(message, || relax(spin))?;
        self.socket.read_message(&mut self.echo, || relax(spin))?;
        if !filled_with(&self.echo, seq) {
            return Err(format!("round trip {seq}: wrong echo").into());
        }
        Ok(())
    }

    fn switch(&mut self) -> Result<(), Error> {
        let spin = self.spin;
        self.mark(SWITCH_MARK)?;
        self.socket.read_message(&mut self.echo, || relax(spin))?;
        if !filled_with(&self.echo, SWITCH_MARK) {
            return Err("the peer did not answer the switch".into());
        }
        Ok(())
    }

    #[inline(always)]
    fn send(&mut self, seq: u64, message: &mut [u8]) -> Result<(), Error> {
        let spin = self.spin;
        stamp(message, seq);
        if self.per_write == 1 {
            self.socket.write_all(message, || relax(spin))?;
            return Ok(());
        }
        self.batch.extend_from_slice(message);
        if self.batch.len() == self.per_write * self.size {
            self.socket.write_all(&self.batch, || relax(spin))?;
            self.batch.clear();
        }
        Ok(())
    }

    fn end_block(&mut self) -> Result<(u64, u64), Error> {
        let spin = self.spin;
        let mut end = vec![0u8; self.size];
        stamp(&mut end, SWITCH_MARK);
        self.batch.extend_from_slice(&end);
        self.socket.write_all(&self.batch, || relax(spin))?;
        self.batch.clear();
        let mut report = [0u8; 16];
        if !self.socket.read_exact(&mut report, || relax(spin))? {
            return Err("the consumer closed without a report".into());
        }
        Ok(read_report(&report))
    }

    fn quit(&mut self) -> Result<(), Error> {
        self.mark(QUIT_MARK)
    }
}

// --- shm-tcp ---

/// shm-tcp, parent side: the acceptor (with the peer's connection) and the trial's state
/// folder, removed after the peer has exited.
struct OursLink<const C: usize> {
    acceptor: Acceptor<C>,
    id: ConnId,
    poller: ours::Poller,
    batch: usize,
    queued: usize,
    spin: bool,
    // Dropped last: the connections' files are in it.
    _dir: tempfile::TempDir,
}

impl<const C: usize> OursLink<C> {
    /// The connection and the poller, apart.
    #[inline(always)]
    fn parts(&mut self) -> (&mut Connection<C>, &mut ours::Poller) {
        let conn = self
            .acceptor
            .connection(self.id)
            .expect("the acceptor keeps its connections");
        (conn, &mut self.poller)
    }

    /// Sends an empty message with `tag` (written at once, after anything queued).
    fn control(&mut self, tag: u16) -> Result<(), Error> {
        let spin = self.spin;
        self.queued = 0;
        let (conn, poller) = self.parts();
        ours::send(conn, tag, &[], false, poller, || relax(spin))
    }

    /// Waits for the next message and returns its tag and the first 16 bytes of its payload.
    fn reply(&mut self) -> Result<(u16, [u8; 16]), Error> {
        let spin = self.spin;
        let (conn, poller) = self.parts();
        ours::recv(
            conn,
            poller,
            || relax(spin),
            |tag, payload| {
                let mut head = [0u8; 16];
                let n = payload.len().min(16);
                head[..n].copy_from_slice(&payload[..n]);
                (tag, head)
            },
        )
    }
}

impl<const C: usize> Link for OursLink<C> {
    #[inline(always)]
    fn round_trip(&mut self, seq: u64, message: &mut [u8]) -> Result<(), Error> {
        let spin = self.spin;
        fill(message, seq);
        let (conn, poller) = self.parts();
        ours::send(conn, TAG_DATA, message, false, poller, || relax(spin))?;
        let size = message.len();
        let good = ours::recv(
            conn,
            poller,
            || relax(spin),
            |tag, echo| tag == TAG_DATA && echo.len() == size && filled_with(echo, seq),
        )?;
        if !good {
            return Err(format!("round trip {seq}: wrong echo").into());
        }
        Ok(())
    }

    fn switch(&mut self) -> Result<(), Error> {
        self.control(TAG_SWITCH)?;
        match self.reply()? {
            (TAG_SWITCH, _) => Ok(()),
            (tag, _) => Err(format!("tag {tag} where the switch's answer was due").into()),
        }
    }

    #[inline(always)]
    fn send(&mut self, seq: u64, message: &mut [u8]) -> Result<(), Error> {
        let spin = self.spin;
        stamp(message, seq);
        let more = self.batch > 1;
        let batch = self.batch;
        self.queued += usize::from(more);
        let flush = more && self.queued == batch;
        if flush {
            self.queued = 0;
        }
        let (conn, poller) = self.parts();
        ours::send(conn, TAG_DATA, message, more, poller, || relax(spin))?;
        if flush {
            ours::flush(conn)?;
        }
        Ok(())
    }

    fn end_block(&mut self) -> Result<(u64, u64), Error> {
        // `push` writes everything queued before it too.
        self.control(TAG_SWITCH)?;
        match self.reply()? {
            (TAG_REPORT, report) => Ok(read_report(&report)),
            (tag, _) => Err(format!("tag {tag} where the consumer's report was due").into()),
        }
    }

    fn quit(&mut self) -> Result<(), Error> {
        self.control(TAG_QUIT)
    }
}

// ---------------------------------------------------------------------------------------------
// The peer process
// ---------------------------------------------------------------------------------------------

/// If this process is a peer (the [`PEER_ENV`] variable is set), runs its job and exits; else
/// returns. Call first thing in `main`.
pub fn run_peer_if_asked() {
    let Ok(spec) = std::env::var(PEER_ENV) else {
        return;
    };
    let code = match peer_main(&spec) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("shm-tcp bench peer ({spec}): {error}");
            1
        }
    };
    std::process::exit(code);
}

fn peer_main(spec: &str) -> Result<(), Error> {
    let fields: Vec<&str> = spec.splitn(8, ',').collect();
    let [raw, ours, test, size, spin, cpu, raw_port, ours_address] = fields[..] else {
        return Err("malformed peer description".into());
    };
    let contender = |code: &str| {
        (code != "-")
            .then(|| Contender::from_code(code))
            .transpose()
    };
    let (_, ours) = (contender(raw)?, contender(ours)?);
    let test = match test {
        "pingpong" => Test::PingPong,
        "stream" => Test::Stream,
        other => return Err(format!("unknown test {other:?}").into()),
    };
    let size: usize = size.parse()?;
    let spin = spin == "1";
    pin_to_arg(cpu)?;
    // In the parent's order: the raw link first.
    let raw = if raw_port == "-" {
        None
    } else {
        let socket = Socket::connect_tcp(raw_port)?;
        socket.set_mode(Mode::Busy)?;
        Some(RawPeer::new(socket, test, size))
    };
    match ours {
        Some(contender) if queue_bytes() == SMALL_QUEUE => {
            let conn = ours::connect::<SMALL_QUEUE>(ours_address, contender.durability)?;
            serve(raw, Some(OursPeer::new(conn, size)), test, spin)
        }
        Some(contender) => {
            let conn = ours::connect::<QUEUE>(ours_address, contender.durability)?;
            serve(raw, Some(OursPeer::new(conn, size)), test, spin)
        }
        None => serve::<SMALL_QUEUE>(raw, None, test, spin),
    }
}

/// What ended the peer's turn on a link.
enum Event {
    /// Switch to the other link.
    Switch,
    /// Exit.
    Quit,
}

/// Serves the link the parent uses, switching when told, until told to quit.
fn serve<const C: usize>(
    mut raw: Option<RawPeer>,
    mut ours: Option<OursPeer<C>>,
    test: Test,
    spin: bool,
) -> Result<(), Error> {
    let both = raw.is_some() && ours.is_some();
    let mut on_raw = raw.is_some();
    loop {
        let event = match (on_raw, &mut raw, &mut ours) {
            (true, Some(raw), _) => raw.serve(test, spin)?,
            (false, _, Some(ours)) => ours.serve(test, spin)?,
            _ => unreachable!("the peer serves a link it has"),
        };
        match event {
            Event::Switch => on_raw ^= both,
            Event::Quit => return Ok(()),
        }
    }
}

/// The peer's raw TCP link. The stream's consumer reads whatever has arrived into one large
/// buffer (one `read`, as shm-tcp's receive buffer does) and consumes every whole message in
/// it, keeping the incomplete tail.
struct RawPeer {
    socket: Socket,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    size: usize,
}

impl RawPeer {
    fn new(socket: Socket, test: Test, size: usize) -> Self {
        let len = match test {
            Test::PingPong => size,
            Test::Stream => RAW_READ,
        };
        Self {
            socket,
            buf: vec![0u8; len],
            start: 0,
            end: 0,
            size,
        }
    }

    fn serve(&mut self, test: Test, spin: bool) -> Result<Event, Error> {
        match test {
            Test::PingPong => loop {
                self.socket.read_message(&mut self.buf, || relax(spin))?;
                let first = seq_of(&self.buf);
                if first == QUIT_MARK {
                    return Ok(Event::Quit);
                }
                self.socket.write_all(&self.buf, || relax(spin))?;
                if first == SWITCH_MARK {
                    return Ok(Event::Switch);
                }
            },
            Test::Stream => self.consume(spin),
        }
    }

    fn consume(&mut self, spin: bool) -> Result<Event, Error> {
        let size = self.size;
        let mut count = 0u64;
        loop {
            while self.end - self.start >= size {
                let seq = consume(&self.buf[self.start..self.start + size]);
                self.start += size;
                match seq {
                    SWITCH_MARK => {
                        let report = report_bytes(count, ours::now());
                        self.socket.write_all(&report, || relax(spin))?;
                        return Ok(Event::Switch);
                    }
                    QUIT_MARK => return Ok(Event::Quit),
                    _ => count += 1,
                }
            }
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            } else if self.buf.len() - self.end < size {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            let room = &mut self.buf[self.end..];
            let read = match &mut self.socket {
                Socket::Tcp(stream) => stream.read(room),
                Socket::Uds(stream) => stream.read(room),
            };
            match read {
                Ok(0) => return Err("the stream ended without a quit".into()),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => relax(spin),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The peer's shm-tcp link.
struct OursPeer<const C: usize> {
    conn: Connection<C>,
    poller: ours::Poller,
    buf: Vec<u8>,
}

impl<const C: usize> OursPeer<C> {
    fn new(conn: Connection<C>, size: usize) -> Self {
        Self {
            conn,
            poller: ours::Poller::new(),
            buf: vec![0u8; size],
        }
    }

    /// The echo pops each message before pushing its copy back, so the echo's `writev` carries
    /// the acknowledgement of that pop in front of it. The consumer reads every word.
    fn serve(&mut self, test: Test, spin: bool) -> Result<Event, Error> {
        let (conn, poller, buf) = (&mut self.conn, &mut self.poller, &mut self.buf);
        let mut count = 0u64;
        loop {
            let (tag, len) = ours::recv(
                conn,
                poller,
                || relax(spin),
                |tag, payload| {
                    match test {
                        Test::PingPong => {
                            let len = payload.len().min(buf.len());
                            buf[..len].copy_from_slice(&payload[..len]);
                        }
                        Test::Stream if tag == TAG_DATA => {
                            consume(payload);
                        }
                        Test::Stream => {}
                    }
                    (tag, payload.len())
                },
            )?;
            match (test, tag) {
                (_, TAG_QUIT) => return Ok(Event::Quit),
                (Test::PingPong, TAG_DATA) if len == buf.len() => {
                    ours::send(conn, TAG_DATA, buf, false, poller, || relax(spin))?;
                }
                (Test::PingPong, TAG_SWITCH) => {
                    ours::send(conn, TAG_SWITCH, &[], false, poller, || relax(spin))?;
                    return Ok(Event::Switch);
                }
                (Test::Stream, TAG_DATA) => count += 1,
                (Test::Stream, TAG_SWITCH) => {
                    let report = report_bytes(count, ours::now());
                    ours::send(conn, TAG_REPORT, &report, false, poller, || relax(spin))?;
                    return Ok(Event::Switch);
                }
                _ => return Err(format!("unexpected message: tag {tag}, {len} bytes").into()),
            }
        }
    }
}
