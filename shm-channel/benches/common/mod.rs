//! Machinery shared by the two bench binaries (`channel`, criterion; `report`, interleaved
//! rounds): the contenders, the peer process, and the round-trip and streaming drivers. Every
//! contender goes through the same driver code, so a difference between two of them is a
//! difference between the transports.
//!
//! Cross-process: the bench binary re-executes itself ([`std::env::current_exe`]) with
//! [`PEER_ENV`] set to a description of the peer's job; [`run_peer_if_asked`], called first thing
//! in `main`, then runs that job and exits. One peer process per trial: busy-polling peers left
//! idle between trials would spin and steal the second core. Each process owns its own handles
//! (there is no shared stack frame across processes); the only shared memory is the segment or
//! the floor's mapping.
//!
//! The peer process, CPU pinning, the channel's attach handshake and echo, the sockets, the two
//! raw floors, the message contents and the placement rule are in [`peers`], which
//! `shm-tcp/examples/pingpong.rs` includes as well.

#[macro_use]
mod peers;

use std::hint::black_box;
use std::io;
use std::net::Shutdown;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use shm_channel::{Channel, Receiver, Sender, WaitOptions, WaitStrategy};
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendError, SendSlot};

use peers::{
    allowed_cpus, attach_channel, cpu_arg, create_channel, fill, filled_with, floor_echo, pin_to,
    pin_to_arg, Floor, Peer, Socket, LIVENESS_EVERY,
};
pub use peers::{cpu_model, load_average};
// Used by the `report` bench only; unused in `channel`, which includes this module too.
#[allow(unused_imports)]
pub use peers::{fine_p50, placements, PLACEMENT_GAP};
pub use peers::{Error, Mode};

/// The environment variable naming the peer's job (internal: set only by the parent).
pub const PEER_ENV: &str = "SHM_BENCH_PEER";

/// Ring capacity for 64 B and 1 KiB messages: small, so the rings stay in cache.
pub const SMALL: usize = 1 << 16;
/// Ring capacity for 64 KiB messages (max payload 512 KiB - 8): room for 15 in flight.
pub const LARGE: usize = 1 << 20;

/// Round trips before timing starts in each trial (caches, branch predictors, page faults).
pub const WARMUP_ROUND_TRIPS: u64 = 2_000;
/// Messages a streaming trial sends before the consumer starts its clock.
pub const WARMUP_MESSAGES: u64 = 1_000;

/// Channel message tags.
const TAG_DATA: u16 = 1;
const TAG_STOP: u16 = 2;
const TAG_REPORT: u16 = 3;
/// Stream end marker in a socket message's first word.
const END_MARK: u64 = u64::MAX;

// ---------------------------------------------------------------------------------------------
// Contenders
// ---------------------------------------------------------------------------------------------

/// What carries the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The 8-byte floor: two `AtomicU64`s on separate 128-byte lines of a shared mapping (round
    /// trips only; [`Floor`] with no payload).
    Floor,
    /// The same-bytes floor: the message's payload and a sequence word each way, each on lines
    /// of their own (round trips only; [`Floor`] with the payload).
    SameBytesFloor,
    /// `shm_channel::Channel` in a `/dev/shm` segment.
    Shm,
    /// TCP loopback, `TCP_NODELAY`.
    Tcp,
    /// Unix stream socket (abstract namespace).
    Uds,
}

/// One contender: a transport, a waiting mode and, for the channel, its lane count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contender {
    /// What carries the messages.
    pub transport: Transport,
    /// How receivers wait.
    pub mode: Mode,
    /// The channel's lanes (`Channel<C, L>`'s `L`: 1 or 16 here); 1 for every other transport.
    pub lanes: usize,
}

const fn contender(transport: Transport, mode: Mode, lanes: usize) -> Contender {
    Contender {
        transport,
        mode,
        lanes,
    }
}

/// The 8-byte raw cross-process floor (two lines).
pub const FLOOR: Contender = contender(Transport::Floor, Mode::Busy, 1);
/// The same-bytes raw cross-process floor: payload and sequence word each way.
pub const SAME_BYTES_FLOOR: Contender = contender(Transport::SameBytesFloor, Mode::Busy, 1);
/// The channel as most users run it: one lane, busy-polled.
pub const SHM_BUSY: Contender = contender(Transport::Shm, Mode::Busy, 1);

/// The round-trip contenders other than the floors, busy-polling first. The channel runs with
/// one lane (the default) and with 16 (the lowest-latency layout), busy-polled; blocking, with
/// one lane only, since the futex wake-ups dwarf what lanes change.
pub const ROUND_TRIP_CONTENDERS: [Contender; 7] = [
    SHM_BUSY,
    contender(Transport::Shm, Mode::Busy, 16),
    contender(Transport::Tcp, Mode::Busy, 1),
    contender(Transport::Uds, Mode::Busy, 1),
    contender(Transport::Shm, Mode::Block, 1),
    contender(Transport::Tcp, Mode::Block, 1),
    contender(Transport::Uds, Mode::Block, 1),
];

/// The streaming contenders, busy-polling first (the first is every streaming ratio's
/// reference). One lane: lanes are a latency option, and they cost streaming rate.
pub const STREAM_CONTENDERS: [Contender; 6] = [
    SHM_BUSY,
    contender(Transport::Tcp, Mode::Busy, 1),
    contender(Transport::Uds, Mode::Busy, 1),
    contender(Transport::Shm, Mode::Block, 1),
    contender(Transport::Tcp, Mode::Block, 1),
    contender(Transport::Uds, Mode::Block, 1),
];

impl Contender {
    /// The name in tables and criterion ids, and the code in the peer's job description: one
    /// table, so the two cannot disagree on which contender is which.
    fn names(self) -> (&'static str, &'static str) {
        match (self.transport, self.mode, self.lanes) {
            (Transport::Floor, _, _) => ("floor, 8 B (2 atomics, 2 lines)", "floor"),
            (Transport::SameBytesFloor, _, _) => {
                ("floor, same bytes (payload + seq each way)", "floor-bytes")
            }
            (Transport::Shm, Mode::Busy, 16) => ("shm channel, 16 lanes (busy-poll)", "shm16-busy"),
            (Transport::Shm, Mode::Busy, _) => ("shm channel, 1 lane (busy-poll)", "shm-busy"),
            (Transport::Tcp, Mode::Busy, _) => ("TCP loopback (busy-poll)", "tcp-busy"),
            (Transport::Uds, Mode::Busy, _) => ("Unix socket (busy-poll)", "uds-busy"),
            (Transport::Shm, Mode::Block, _) => ("shm channel, 1 lane (futex Block)", "shm-block"),
            (Transport::Tcp, Mode::Block, _) => ("TCP loopback (blocking)", "tcp-block"),
            (Transport::Uds, Mode::Block, _) => ("Unix socket (blocking)", "uds-block"),
        }
    }

    /// Name in tables and criterion ids.
    pub fn label(self) -> &'static str {
        self.names().0
    }

    fn code(self) -> &'static str {
        self.names().1
    }

    fn from_code(code: &str) -> Result<Self, Error> {
        [FLOOR, SAME_BYTES_FLOOR]
            .into_iter()
            .chain(ROUND_TRIP_CONTENDERS)
            .chain(STREAM_CONTENDERS)
            .find(|c| c.code() == code)
            .ok_or_else(|| format!("unknown contender {code:?}").into())
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
// CPUs
// ---------------------------------------------------------------------------------------------

/// Where the two processes run, chosen once (before the parent pins itself, which would shrink
/// the allowed set seen afterwards).
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    /// The parent's and the peer's CPU, when two are allowed.
    pub cpus: Option<(usize, usize)>,
    /// `false` with a single allowed CPU: poll loops yield instead of spinning.
    pub spin: bool,
    /// How many CPUs were allowed.
    // Printed by the `report` bench only; unread in `channel`, which includes this module too.
    #[allow(dead_code)]
    pub allowed: usize,
}

/// Chooses the placement and pins this (the measuring) process; prints a note once.
pub fn placement() -> Placement {
    static PLACEMENT: OnceLock<Placement> = OnceLock::new();
    *PLACEMENT.get_or_init(|| {
        // No affinity to read: unpinned, as with a single CPU.
        let allowed = allowed_cpus().unwrap_or_default();
        let cpus = match allowed[..] {
            [mine, theirs, ..] => match pin_to(mine) {
                Ok(()) => Some((mine, theirs)),
                Err(error) => {
                    eprintln!("shm-channel benches: NOTE: {error}; running unpinned");
                    None
                }
            },
            _ => None,
        };
        match cpus {
            Some((a, b)) => eprintln!(
                "shm-channel benches: measuring process on CPU {a}, peer process on CPU {b} (of \
                 {} allowed)",
                allowed.len()
            ),
            None => eprintln!(
                "shm-channel benches: NOTE: not pinned ({} CPU(s) allowed); with one CPU the \
                 busy loops yield and the numbers mean little",
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

/// Between two polls that found nothing: nothing at all while spinning (as the floor does), a
/// yield on a single CPU.
#[inline(always)]
fn relax(spin: bool) {
    if !spin {
        std::thread::yield_now();
    }
}

/// Between two attempts to send into a full queue: a pause while spinning, so the retries do
/// not keep pulling the consumer's index line away from the consumer, which writes it on every
/// pop (without it, a full ring turns every pop into a cache miss); a yield on a single CPU.
#[inline(always)]
fn relax_full(spin: bool) {
    if spin {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

// ---------------------------------------------------------------------------------------------
// Timing hooks
// ---------------------------------------------------------------------------------------------

/// How the ping-pong driver times individual round trips: [`NoTimer`] for criterion (which
/// times the whole trial), a histogram-recording timer in the report.
pub trait RoundTripTimer {
    /// A timestamp before a round trip.
    fn start(&mut self) -> u64;
    /// After the round trip that started at `t0`.
    fn stop(&mut self, t0: u64);
}

/// Times nothing.
// Used by the `channel` bench only; unused in `report`, which includes this module too.
#[allow(dead_code)]
pub struct NoTimer;

impl RoundTripTimer for NoTimer {
    #[inline(always)]
    fn start(&mut self) -> u64 {
        0
    }
    #[inline(always)]
    fn stop(&mut self, _t0: u64) {}
}

// ---------------------------------------------------------------------------------------------
// Drivers (measuring process)
// ---------------------------------------------------------------------------------------------

/// One ping-pong trial of `size`-byte messages against a fresh peer: `warmup` untimed round
/// trips, then up to `n` timed ones, stopping early once `budget` has passed (checked every 64).
/// Returns the timed round trips and their total time.
pub fn round_trips<M: RoundTripTimer>(
    contender: Contender,
    size: usize,
    warmup: u64,
    n: u64,
    budget: Duration,
    timer: &mut M,
) -> Result<(u64, Duration), Error> {
    let spin = placement().spin;
    let mut message = vec![0u8; size];
    macro_rules! drive {
        ($link:expr) => {{
            let link = &mut $link;
            for seq in 1..=warmup {
                link.round_trip(seq, &mut message)?;
            }
            let begin = Instant::now();
            let mut done = 0;
            while done < n {
                let t0 = timer.start();
                link.round_trip(warmup + 1 + done, &mut message)?;
                timer.stop(t0);
                done += 1;
                if done % 64 == 0 && begin.elapsed() >= budget {
                    break;
                }
            }
            let elapsed = begin.elapsed();
            link.finish()?;
            Ok((done, elapsed))
        }};
    }
    let small = fits_small(contender.lanes, size);
    match (contender.transport, contender.lanes) {
        (Transport::Floor, _) => drive!(FloorLink::start(contender, 0, spin)?),
        (Transport::SameBytesFloor, _) => drive!(FloorLink::start(contender, size, spin)?),
        (Transport::Shm, 16) if small => drive!(ShmLink::<SMALL, 16>::start(
            contender,
            Test::PingPong,
            size,
            spin
        )?),
        (Transport::Shm, 16) => drive!(ShmLink::<LARGE, 16>::start(
            contender,
            Test::PingPong,
            size,
            spin
        )?),
        (Transport::Shm, _) if small => drive!(ShmLink::<SMALL, 1>::start(
            contender,
            Test::PingPong,
            size,
            spin
        )?),
        (Transport::Shm, _) => drive!(ShmLink::<LARGE, 1>::start(
            contender,
            Test::PingPong,
            size,
            spin
        )?),
        (Transport::Tcp | Transport::Uds, _) => {
            drive!(SocketLink::start(contender, Test::PingPong, size, spin)?)
        }
    }
}

/// One streaming trial of `size`-byte messages to a fresh peer: [`WARMUP_MESSAGES`], then up to
/// `n` more, stopping early once `budget` has passed (checked every 64). Returns what the
/// consumer counted after the warm-up, and the time between its receiving the last warm-up
/// message and the last message.
pub fn stream(
    contender: Contender,
    size: usize,
    n: u64,
    budget: Duration,
) -> Result<(u64, Duration), Error> {
    assert!(size >= 8, "stream messages carry an 8-byte sequence number");
    let spin = placement().spin;
    let mut message = vec![0u8; size];
    macro_rules! drive {
        ($link:expr) => {{
            let link = &mut $link;
            for seq in 0..WARMUP_MESSAGES {
                link.send(seq, &mut message)?;
            }
            let begin = Instant::now();
            let mut sent = 0;
            while sent < n {
                link.send(WARMUP_MESSAGES + sent, &mut message)?;
                sent += 1;
                if sent % 64 == 0 && begin.elapsed() >= budget {
                    break;
                }
            }
            let (count, nanos) = link.end_stream()?;
            link.finish()?;
            if count != sent {
                return Err(format!("the consumer counted {count} of {sent} messages").into());
            }
            Ok((count, Duration::from_nanos(nanos)))
        }};
    }
    assert_eq!(contender.lanes, 1, "streams run on one lane");
    match contender.transport {
        Transport::Floor | Transport::SameBytesFloor => {
            Err("the floors have no streaming mode".into())
        }
        Transport::Shm if size <= Channel::<SMALL>::MAX_PAYLOAD as usize => {
            drive!(ShmLink::<SMALL, 1>::start(
                contender,
                Test::Stream,
                size,
                spin
            )?)
        }
        Transport::Shm => drive!(ShmLink::<LARGE, 1>::start(
            contender,
            Test::Stream,
            size,
            spin
        )?),
        Transport::Tcp | Transport::Uds => {
            drive!(SocketLink::start(contender, Test::Stream, size, spin)?)
        }
    }
}

/// Whether `size`-byte messages fit a channel of `lanes` lanes of [`SMALL`] capacity (the
/// parent and the peer must pick the same capacity).
fn fits_small(lanes: usize, size: usize) -> bool {
    let max = if lanes == 16 {
        Channel::<SMALL, 16>::MAX_PAYLOAD
    } else {
        Channel::<SMALL, 1>::MAX_PAYLOAD
    };
    size <= max as usize
}

/// Writes `seq` into the first word of `message` (streams and control messages; a round trip
/// [`fill`]s all of it instead).
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

/// Reads every word of a consumed payload (a consumer that ignored the bytes would flatter the
/// shared-memory transport, whose payload is not copied on receive), returning the first.
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

/// Starts the peer process of one trial, its job described in [`PEER_ENV`].
fn spawn_peer(contender: Contender, test: Test, size: usize, address: &str) -> Result<Peer, Error> {
    let placement = placement();
    let spec = format!(
        "{},{},{size},{},{},{address}",
        contender.code(),
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

// --- the floors ---

/// Either floor, parent side ([`Floor`]: the 8-byte one with no payload, the same-bytes one with
/// the message's).
struct FloorLink {
    floor: Floor,
    spin: bool,
}

impl FloorLink {
    fn start(contender: Contender, payload: usize, spin: bool) -> Result<Self, Error> {
        let floor = Floor::start(payload, |path| {
            spawn_peer(contender, Test::PingPong, payload, path)
        })?;
        Ok(Self { floor, spin })
    }

    #[inline(always)]
    fn round_trip(&mut self, seq: u64, message: &mut [u8]) -> Result<(), Error> {
        let spin = self.spin;
        self.floor.round_trip(seq, message, || relax(spin))
    }

    fn finish(&mut self) -> Result<(), Error> {
        self.floor.finish()
    }
}

// --- the channel ---

/// The channel, parent side (end A).
struct ShmLink<const C: usize, const L: usize> {
    tx: Sender<C, L>,
    rx: Receiver<C, L>,
    peer: Peer,
    mode: Mode,
    test: Test,
    spin: bool,
    /// Blocking waits: bounded, so a dead peer is noticed (the channel also reports it).
    block: WaitOptions,
}

impl<const C: usize, const L: usize> ShmLink<C, L> {
    fn start(contender: Contender, test: Test, size: usize, spin: bool) -> Result<Self, Error> {
        let (tx, rx, peer) =
            create_channel::<C, L>("bench-chan", |name| spawn_peer(contender, test, size, name))?;
        Ok(Self {
            tx,
            rx,
            peer,
            mode: contender.mode,
            test,
            spin,
            block: WaitOptions::new(WaitStrategy::Block { spin_first: 0 })
                .timeout(Duration::from_millis(100)),
        })
    }

    /// Sends `message` as it is (the caller has stamped or filled it).
    #[inline(always)]
    fn send_tagged(&mut self, tag: u16, message: &[u8]) -> Result<(), Error> {
        let len = message.len() as u32;
        let mut polls = 0u64;
        let mut slot = loop {
            match self.tx.alloc(len, tag) {
                Ok(slot) => break slot,
                Err(SendError::Full) => {
                    polls += 1;
                    if polls.is_multiple_of(LIVENESS_EVERY) {
                        self.peer.check_running()?;
                    }
                    relax_full(self.spin);
                }
                Err(e) => return Err(e.into()),
            }
        };
        slot.payload_mut().copy_from_slice(message);
        slot.push();
        Ok(())
    }

    /// Waits until a message is readable.
    #[inline(always)]
    fn wait(&mut self) -> Result<(), Error> {
        match self.mode {
            Mode::Busy => {
                let mut polls = 0u64;
                while self.rx.is_empty() {
                    polls += 1;
                    if polls.is_multiple_of(LIVENESS_EVERY) {
                        self.peer.check_running()?;
                    }
                    relax(self.spin);
                }
                Ok(())
            }
            Mode::Block => loop {
                match self.rx.wait_readable(&self.block) {
                    Ok(()) => return Ok(()),
                    Err(RecvError::TimedOut) => self.peer.check_running()?,
                    Err(e) => return Err(e.into()),
                }
            },
        }
    }

    #[inline(always)]
    fn round_trip(&mut self, seq: u64, message: &mut [u8]) -> Result<(), Error> {
        fill(message, seq);
        self.send_tagged(TAG_DATA, message)?;
        self.wait()?;
        let echo = self.rx.front()?;
        // Every byte checked in place, as every contender checks its echo.
        if echo.len() != message.len() || !filled_with(echo.payload(), seq) {
            return Err(format!("round trip {seq}: wrong echo").into());
        }
        self.rx.pop()?;
        Ok(())
    }

    #[inline(always)]
    fn send(&mut self, seq: u64, message: &mut [u8]) -> Result<(), Error> {
        stamp(message, seq);
        self.send_tagged(TAG_DATA, message)
    }

    fn end_stream(&mut self) -> Result<(u64, u64), Error> {
        self.send_tagged(TAG_STOP, &[0u8; 8])?;
        self.wait()?;
        let report = self.rx.front()?;
        if report.tag() != TAG_REPORT || report.len() != 16 {
            return Err("the consumer's report is malformed".into());
        }
        let payload = report.payload();
        let result = (seq_of(&payload[..8]), seq_of(&payload[8..]));
        self.rx.pop()?;
        Ok(result)
    }

    fn finish(&mut self) -> Result<(), Error> {
        if self.test == Test::PingPong {
            // Tell the echo to stop (a stream's consumer stopped at the end of the stream).
            self.send_tagged(TAG_STOP, &[0u8; 8])?;
        }
        self.peer.finish()
    }
}

// --- sockets ---

impl Socket {
    /// Ends the echo (which stops at the end of the stream); only the benches need it, the
    /// example's parent drops its socket instead.
    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.shutdown(Shutdown::Write),
            Socket::Uds(s) => s.shutdown(Shutdown::Write),
        }
    }
}

/// TCP loopback or a Unix socket, parent side. Messages have a fixed size, so no framing.
struct SocketLink {
    socket: Socket,
    echo: Vec<u8>,
    peer: Peer,
    spin: bool,
}

impl SocketLink {
    fn start(contender: Contender, test: Test, size: usize, spin: bool) -> Result<Self, Error> {
        let start_peer = |address: &str| spawn_peer(contender, test, size, address);
        let (socket, peer) = match contender.transport {
            Transport::Tcp => Socket::accept_tcp(start_peer)?,
            _ => Socket::accept_uds(start_peer)?,
        };
        socket.set_mode(contender.mode)?;
        Ok(Self {
            socket,
            echo: vec![0u8; size],
            peer,
            spin,
        })
    }

    #[inline(always)]
    fn round_trip(&mut self, seq: u64, message: &mut [u8]) -> Result<(), Error> {
        fill(message, seq);
        self.socket.write_all(message, || relax(self.spin))?;
        self.socket
            .read_message(&mut self.echo, || relax(self.spin))?;
        if !filled_with(&self.echo, seq) {
            return Err(format!("round trip {seq}: wrong echo").into());
        }
        Ok(())
    }

    #[inline(always)]
    fn send(&mut self, seq: u64, message: &mut [u8]) -> Result<(), Error> {
        stamp(message, seq);
        self.socket.write_all(message, || relax(self.spin))?;
        Ok(())
    }

    fn end_stream(&mut self) -> Result<(u64, u64), Error> {
        let mut end = vec![0u8; self.echo.len()];
        stamp(&mut end, END_MARK);
        self.socket.write_all(&end, || relax(self.spin))?;
        let mut report = [0u8; 16];
        if !self.socket.read_exact(&mut report, || relax(self.spin))? {
            return Err("the consumer closed without a report".into());
        }
        Ok((seq_of(&report[..8]), seq_of(&report[8..])))
    }

    fn finish(&mut self) -> Result<(), Error> {
        // The echo stops at the end of the stream.
        let _ = self.socket.shutdown_write();
        self.peer.finish()
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
            eprintln!("shm-channel bench peer ({spec}): {error}");
            1
        }
    };
    std::process::exit(code);
}

fn peer_main(spec: &str) -> Result<(), Error> {
    let fields: Vec<&str> = spec.splitn(6, ',').collect();
    let [contender, test, size, spin, cpu, address] = fields[..] else {
        return Err("malformed peer description".into());
    };
    let contender = Contender::from_code(contender)?;
    let test = match test {
        "pingpong" => Test::PingPong,
        "stream" => Test::Stream,
        other => return Err(format!("unknown test {other:?}").into()),
    };
    let size: usize = size.parse()?;
    let spin = spin == "1";
    pin_to_arg(cpu)?;
    let parent = rustix::process::getppid();
    let orphaned = move || rustix::process::getppid() != parent;
    let small = fits_small(contender.lanes, size);
    let mode = contender.mode;
    match (contender.transport, contender.lanes) {
        (Transport::Floor | Transport::SameBytesFloor, _) => {
            floor_echo(address, size, || relax(spin), orphaned)
        }
        (Transport::Shm, 16) if small => peer_shm::<SMALL, 16>(address, mode, test, spin, orphaned),
        (Transport::Shm, 16) => peer_shm::<LARGE, 16>(address, mode, test, spin, orphaned),
        (Transport::Shm, _) if small => peer_shm::<SMALL, 1>(address, mode, test, spin, orphaned),
        (Transport::Shm, _) => peer_shm::<LARGE, 1>(address, mode, test, spin, orphaned),
        (Transport::Tcp, _) => peer_socket(
            Socket::connect_tcp(address)?,
            contender.mode,
            test,
            size,
            spin,
        ),
        (Transport::Uds, _) => peer_socket(
            Socket::connect_uds(address)?,
            contender.mode,
            test,
            size,
            spin,
        ),
    }
}

fn peer_shm<const C: usize, const L: usize>(
    name: &str,
    mode: Mode,
    test: Test,
    spin: bool,
    orphaned: impl Fn() -> bool,
) -> Result<(), Error> {
    let (mut tx, mut rx) = attach_channel::<C, L>(name)?;
    // Without a timeout: the channel itself reports a dead parent (`Disconnected`).
    let block = WaitOptions::new(WaitStrategy::Block { spin_first: 0 });
    let mut count = 0u64;
    let mut clock: Option<Instant> = None;
    let mut polls = 0u64;
    loop {
        match mode {
            Mode::Busy => {
                while rx.is_empty() {
                    polls += 1;
                    if polls.is_multiple_of(LIVENESS_EVERY) && orphaned() {
                        return Err("the measuring process is gone".into());
                    }
                    relax(spin);
                }
            }
            Mode::Block => rx.wait_readable(&block)?,
        }
        let message = rx.front()?;
        match (test, message.tag()) {
            (Test::PingPong, TAG_DATA) => {
                let echo = filled_slot!(tx, TAG_DATA, message.payload(), relax(spin));
                // Pop the request before publishing the reply: pop is the commit.
                rx.pop()?;
                echo.push();
            }
            (Test::Stream, TAG_DATA) => {
                let seq = consume(message.payload());
                rx.pop()?;
                if seq >= WARMUP_MESSAGES {
                    count += 1;
                } else if seq == WARMUP_MESSAGES - 1 {
                    clock = Some(Instant::now());
                }
            }
            (Test::Stream, TAG_STOP) => {
                rx.pop()?;
                let nanos = clock.map_or(0, |c| c.elapsed().as_nanos() as u64);
                let mut report = [0u8; 16];
                report[..8].copy_from_slice(&count.to_le_bytes());
                report[8..].copy_from_slice(&nanos.to_le_bytes());
                tx.send(TAG_REPORT, &report)?;
                return Ok(());
            }
            (Test::PingPong, TAG_STOP) => {
                rx.pop()?;
                return Ok(());
            }
            (_, tag) => return Err(format!("unexpected tag {tag}").into()),
        }
    }
}

fn peer_socket(
    mut socket: Socket,
    mode: Mode,
    test: Test,
    size: usize,
    spin: bool,
) -> Result<(), Error> {
    socket.set_mode(mode)?;
    let mut buf = vec![0u8; size];
    let mut count = 0u64;
    let mut clock: Option<Instant> = None;
    loop {
        if !socket.read_exact(&mut buf, || relax(spin))? {
            return match test {
                Test::PingPong => Ok(()),
                Test::Stream => Err("the stream ended without an end mark".into()),
            };
        }
        match test {
            Test::PingPong => socket.write_all(&buf, || relax(spin))?,
            Test::Stream => {
                let seq = consume(&buf);
                if seq == END_MARK {
                    let nanos = clock.map_or(0, |c| c.elapsed().as_nanos() as u64);
                    let mut report = [0u8; 16];
                    report[..8].copy_from_slice(&count.to_le_bytes());
                    report[8..].copy_from_slice(&nanos.to_le_bytes());
                    socket.write_all(&report, || relax(spin))?;
                    // Wait for the parent to close, so the report is not lost to a reset.
                    let _ = socket.set_mode(Mode::Block);
                    let _ = socket.read_exact(&mut buf[..1], || relax(spin));
                    return Ok(());
                }
                if seq >= WARMUP_MESSAGES {
                    count += 1;
                } else if seq == WARMUP_MESSAGES - 1 {
                    clock = Some(Instant::now());
                }
            }
        }
    }
}
