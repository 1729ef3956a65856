//! Exactly-once, in-order delivery through a fault-injecting proxy on loopback
//! (`tests/common/proxy.rs`): an [`Acceptor`] on one thread, a client [`Connection`] on another
//! whose address is the proxy in front of the acceptor, both pushing messages of seeded random
//! sizes and checking every byte of what they receive, while the proxy cuts the connection at
//! random points (mid-hello, mid-frame, mid-resend), forwards one byte per `write` and delays
//! chunks.
//!
//! Every message's length and tag derive from (seed, direction, sequence number); a payload of
//! 8 bytes or more starts with its sequence number, and every other byte comes from a pattern
//! keyed by (seed, direction, sequence number, length). The receiver keeps its own expected
//! sequence number, so a lost, duplicated, reordered or damaged message fails at once, with the
//! place it went wrong.
//!
//! - `thousand_cuts_both_ways`: phases of cut plans until the proxy has cut `SHM_TCP_CUTS`
//!   (default 1000) connections, then a drain through a faithful proxy; each side must have
//!   received exactly what the other pushed.
//! - `keyed_handshake_cut_anywhere`: the same with a pre-shared key (two more handshake frames
//!   to cut into), 200 cuts (`SHM_TCP_KEYED_CUTS`).
//! - `one_byte_writes_reassemble_frames`: a few thousand messages each way, every byte in its
//!   own TCP segment, no cuts: one handshake, nothing lost.
//! - `cuts_during_resend_of_a_large_backlog`: both sides fill a 16 MiB queue while the proxy
//!   refuses, then every reconnect resends that backlog, through a proxy slow enough that the
//!   sender's socket fills (partial writes), and is cut part-way through (`SHM_TCP_RESEND_CUTS`,
//!   default 30).
//!
//! The proxy only ever forwards a prefix of each connection's bytes, faithfully: so the only
//! errors a side may see are end of file, a reset and a time-out. Any other (an invalid frame,
//! a protocol violation, a refused handshake) fails the test as well.
//!
//! `SHM_TCP_SEED` replays a seed (the schedule of plans, sizes and budgets; thread timing is
//! not reproducible). Run with `--nocapture` for a summary of each run.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::now;
use common::proxy::{CutScope, FaultPlan, Proxy, ProxyStats, SplitMix64};
use shm_tcp::{
    Acceptor, AcceptorEvent, AcceptorOptions, Connection, ConnectionError, ConnectionOptions,
    ConnectionStats, LinkState,
};
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendError, SendSlot};

/// Index of the client-to-server stream (the client pushes it, the server checks it).
const C2S: usize = 0;
/// Index of the server-to-client stream.
const S2C: usize = 1;
const STREAM_NAMES: [&str; 2] = ["client->server", "server->client"];

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

fn seed(default: u64) -> u64 {
    env_u64("SHM_TCP_SEED", default)
}

// ---------------------------------------------------------------------------------------------
// The messages: length, tag and every byte derived from (seed, stream, sequence number).
// ---------------------------------------------------------------------------------------------

/// SplitMix64's finalizer: a cheap, good 64-bit mix.
#[inline]
fn fmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline]
fn key(seed: u64, stream: usize, seq: u64, salt: u64) -> u64 {
    fmix(
        fmix(seed ^ (stream as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            ^ fmix(seq.wrapping_add(salt.wrapping_mul(0xD1B5_4A32_D192_ED03))),
    )
}

/// How a stream's messages are shaped.
#[derive(Clone, Copy, Debug)]
struct Shape {
    seed: u64,
    /// The largest payload drawn (at most the queue's `MAX_PAYLOAD`).
    max_len: u32,
}

impl Shape {
    /// The payload length of message `seq` of `stream`, in `0..=max_len`: mostly small (where
    /// many frames share a segment), some medium, some up to and exactly `max_len`.
    fn len(&self, stream: usize, seq: u64) -> u32 {
        let r = key(self.seed, stream, seq, 1);
        let class = r % 100;
        let x = r >> 8;
        let max = u64::from(self.max_len);
        let len = match class {
            0..=29 => x % 17,
            30..=59 => 17 + x % 496,
            60..=79 => 513 + x % 3584,
            80..=94 => x % (max + 1),
            _ => max - (x % 8).min(max),
        };
        len.min(max) as u32
    }

    fn tag(&self, stream: usize, seq: u64) -> u16 {
        (key(self.seed, stream, seq, 2) >> 48) as u16
    }

    /// The 8 bytes at word `w` of message `seq`'s payload of `len` bytes.
    #[inline]
    fn word(&self, stream: usize, seq: u64, len: usize, w: usize) -> [u8; 8] {
        if w == 0 && len >= 8 {
            return seq.to_le_bytes();
        }
        let base = key(self.seed, stream, seq, 3 + len as u64);
        fmix(base.wrapping_add((w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))).to_le_bytes()
    }

    fn fill(&self, stream: usize, seq: u64, payload: &mut [u8]) {
        let len = payload.len();
        for (w, chunk) in payload.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&self.word(stream, seq, len, w)[..chunk.len()]);
        }
    }

    /// Checks that `payload` (tagged `tag`) is message `seq` of `stream`, byte for byte; panics
    /// with what differs.
    fn check(&self, who: &str, stream: usize, seq: u64, tag: u16, payload: &[u8]) {
        if let Err(why) = self.verify(stream, seq, tag, payload) {
            panic!("{who}: {why}");
        }
    }

    /// What [`check`](Self::check) checks, returning what differs.
    fn verify(&self, stream: usize, seq: u64, tag: u16, payload: &[u8]) -> Result<(), String> {
        let name = STREAM_NAMES[stream];
        let len = self.len(stream, seq) as usize;
        if payload.len() >= 8 {
            let found = u64::from_le_bytes(payload[..8].try_into().unwrap());
            if found != seq {
                let what = if found < seq {
                    "a duplicate or a reordering"
                } else {
                    "a gap: messages were lost"
                };
                return Err(format!(
                    "message {seq} of the {name} stream was due, but the message received \
                     carries sequence number {found} ({what}; {} bytes received, {len} due)",
                    payload.len()
                ));
            }
        }
        if payload.len() != len {
            return Err(format!(
                "message {seq} of the {name} stream has {} bytes, {len} were pushed",
                payload.len()
            ));
        }
        if tag != self.tag(stream, seq) {
            return Err(format!(
                "message {seq} of the {name} stream has tag {tag:#06x}, {:#06x} was pushed",
                self.tag(stream, seq)
            ));
        }
        for (w, chunk) in payload.chunks(8).enumerate() {
            let due = self.word(stream, seq, len, w);
            if chunk != &due[..chunk.len()] {
                let i = chunk.iter().zip(due).position(|(a, b)| *a != b).unwrap();
                return Err(format!(
                    "message {seq} of the {name} stream ({len} bytes) differs at byte {}: \
                     {:#04x} received, {:#04x} pushed",
                    w * 8 + i,
                    chunk[i],
                    due[i]
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// What the two threads and the driver share.
// ---------------------------------------------------------------------------------------------

/// Per side (indexed by the stream it pushes: `C2S` is the client, `S2C` the server).
#[derive(Default)]
struct SideShared {
    /// Set once the side pushes no more, to its final push count (`u64::MAX` before).
    pushed_total: AtomicU64,
    /// Progress, for the driver and the diagnostics.
    pushed: AtomicU64,
    received: AtomicU64,
    unacked: AtomicU64,
    poll_errors: AtomicU64,
    handshakes: AtomicU64,
    state: AtomicU8,
    /// Everything it pushed was popped by the peer and it received everything the peer pushed.
    done: AtomicBool,
}

struct Control {
    sides: [SideShared; 2],
    /// The driver says: push no more.
    stop_push: AtomicBool,
    /// A thread failed, or the deadline passed: everyone stops.
    abort: AtomicBool,
    started: Instant,
    deadline: Instant,
}

impl Control {
    fn new(limit: Duration) -> Self {
        let control = Self {
            sides: Default::default(),
            stop_push: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            started: Instant::now(),
            deadline: Instant::now() + limit,
        };
        for side in &control.sides {
            side.pushed_total.store(u64::MAX, Ordering::SeqCst);
        }
        control
    }

    fn both_done(&self) -> bool {
        self.sides.iter().all(|s| s.done.load(Ordering::SeqCst))
    }

    fn progress(&self) -> u64 {
        self.sides
            .iter()
            .map(|s| s.received.load(Ordering::Relaxed))
            .sum()
    }

    fn describe(&self, proxy: &Proxy) -> String {
        let mut text = format!(
            "after {:.1} s; proxy {:?}",
            self.started.elapsed().as_secs_f64(),
            proxy.stats()
        );
        for (i, side) in self.sides.iter().enumerate() {
            let state = match side.state.load(Ordering::Relaxed) {
                0 => "disconnected",
                1 => "connecting",
                2 => "handshaking",
                3 => "connected",
                _ => "none yet",
            };
            let total = side.pushed_total.load(Ordering::Relaxed);
            text += &format!(
                "\n  {}: pushed {} (final: {}), received {}, unacknowledged {}, poll errors {}, \
                 handshakes {}, {state}, done {}",
                ["client", "server"][i],
                side.pushed.load(Ordering::Relaxed),
                if total == u64::MAX {
                    "not yet".to_owned()
                } else {
                    total.to_string()
                },
                side.received.load(Ordering::Relaxed),
                side.unacked.load(Ordering::Relaxed),
                side.poll_errors.load(Ordering::Relaxed),
                side.handshakes.load(Ordering::Relaxed),
                side.done.load(Ordering::Relaxed),
            );
        }
        text
    }

    /// Sleeps a millisecond; panics (after stopping the threads) past the deadline, when a
    /// thread failed, or when nothing was delivered for `stall` (a livelock).
    fn tick(&self, proxy: &Proxy, watch: &mut (u64, Instant), stall: Duration) {
        thread::sleep(Duration::from_millis(1));
        if self.abort.load(Ordering::SeqCst) {
            panic!(
                "a side failed (its panic follows): {}",
                self.describe(proxy)
            );
        }
        let progress = self.progress();
        if progress != watch.0 {
            *watch = (progress, Instant::now());
        }
        let stalled = watch.1.elapsed() > stall;
        if Instant::now() > self.deadline || stalled {
            self.abort.store(true, Ordering::SeqCst);
            let why = if stalled {
                format!("no message delivered for {stall:?}")
            } else {
                "deadline passed".to_owned()
            };
            panic!("{why}: {}", self.describe(proxy));
        }
    }
}

/// Sets `abort` if the thread holding it unwinds, so the other side and the driver stop.
struct AbortOnPanic<'a>(&'a Control);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.abort.store(true, Ordering::SeqCst);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One side: pushes its stream, checks the peer's.
// ---------------------------------------------------------------------------------------------

/// What a side reports at the end.
#[derive(Debug, Default)]
struct Report {
    pushed: u64,
    received: u64,
    bytes_checked: u64,
    poll_errors: u64,
    /// Poll errors and failed logins by kind.
    errors: std::collections::BTreeMap<&'static str, u64>,
    stats: ConnectionStats,
    /// Acceptor only: logins handed over, sockets that failed before or during their hello.
    logins: u64,
    failed_logins: u64,
}

struct Endpoint<'a> {
    who: &'static str,
    out: usize,
    shape: Shape,
    push_limit: u64,
    control: &'a Control,
    finished_pushing: bool,
    report: Report,
}

/// Messages handled per call before the connection is polled again.
const BURST: usize = 32;

impl<'a> Endpoint<'a> {
    fn new(who: &'static str, out: usize, shape: Shape, push_limit: u64, c: &'a Control) -> Self {
        Self {
            who,
            out,
            shape,
            push_limit,
            control: c,
            finished_pushing: false,
            report: Report::default(),
        }
    }

    fn me(&self) -> &SideShared {
        &self.control.sides[self.out]
    }

    fn peer(&self) -> &SideShared {
        &self.control.sides[1 - self.out]
    }

    /// Pops and checks what arrived, then pushes what fits; whether anything moved.
    fn pump<const C: usize>(&mut self, conn: &mut Connection<C>) -> bool {
        let mut moved = false;
        let inbound = 1 - self.out;
        for _ in 0..BURST {
            match conn.front() {
                Ok(msg) => {
                    let seq = self.report.received;
                    self.shape
                        .check(self.who, inbound, seq, msg.tag(), msg.payload());
                    self.report.bytes_checked += msg.len() as u64;
                }
                Err(RecvError::Empty) => break,
                Err(error) => panic!("{}: front: {error}", self.who),
            }
            conn.pop()
                .unwrap_or_else(|e| panic!("{}: pop after front: {e}", self.who));
            self.report.received += 1;
            moved = true;
        }
        if !self.finished_pushing
            && (self.control.stop_push.load(Ordering::SeqCst)
                || self.report.pushed >= self.push_limit)
        {
            self.finished_pushing = true;
            self.me()
                .pushed_total
                .store(self.report.pushed, Ordering::SeqCst);
        }
        if !self.finished_pushing {
            for _ in 0..BURST {
                if self.report.pushed >= self.push_limit {
                    break;
                }
                let seq = self.report.pushed;
                let len = self.shape.len(self.out, seq);
                let tag = self.shape.tag(self.out, seq);
                match conn.alloc(len, tag) {
                    Ok(mut slot) => {
                        self.shape.fill(self.out, seq, slot.payload_mut());
                        slot.push();
                    }
                    Err(SendError::Full) => break,
                    Err(error) => panic!("{}: alloc({len}): {error}", self.who),
                }
                assert_eq!(
                    conn.next_seq(),
                    seq + 1,
                    "{}: next_seq after push",
                    self.who
                );
                self.report.pushed += 1;
                moved = true;
            }
        }
        let peer_total = self.peer().pushed_total.load(Ordering::SeqCst);
        assert!(
            peer_total == u64::MAX || self.report.received <= peer_total,
            "{}: received {} messages, the peer pushed {peer_total}",
            self.who,
            self.report.received
        );
        let me = self.me();
        me.pushed.store(self.report.pushed, Ordering::Relaxed);
        me.received.store(self.report.received, Ordering::Relaxed);
        me.unacked.store(conn.unacknowledged(), Ordering::Relaxed);
        me.handshakes
            .store(conn.stats().handshakes, Ordering::Relaxed);
        me.state.store(state_code(conn.state()), Ordering::Relaxed);
        if self.finished_pushing && self.report.received == peer_total && conn.unacknowledged() == 0
        {
            me.done.store(true, Ordering::SeqCst);
        }
        moved
    }

    /// A disconnect reported by `poll`: what a cut causes is counted, anything else fails.
    fn poll_error(&mut self, error: &ConnectionError) {
        check_disconnect(self.who, "poll", error);
        *self.report.errors.entry(variant(error)).or_default() += 1;
        self.report.poll_errors += 1;
        self.me()
            .poll_errors
            .store(self.report.poll_errors, Ordering::Relaxed);
    }

    /// Whether to leave the loop: both sides done (`Some(true)`), or told to abort
    /// (`Some(false)`).
    fn should_stop(&self) -> Option<bool> {
        if self.control.abort.load(Ordering::SeqCst) {
            return Some(false);
        }
        self.control.both_done().then_some(true)
    }
}

/// The kind of a connection error, for the counts.
fn variant(error: &ConnectionError) -> &'static str {
    match error {
        ConnectionError::Io { .. } => "Io",
        ConnectionError::Closed { .. } => "Closed",
        ConnectionError::TimedOut { .. } => "TimedOut",
        ConnectionError::Frame { .. } => "Frame",
        ConnectionError::Hello { .. } => "Hello",
        ConnectionError::Protocol { .. } => "Protocol",
        ConnectionError::Recovery { .. } => "Recovery",
        ConnectionError::Rejected { .. } => "Rejected",
        ConnectionError::Authentication { .. } => "Authentication",
        ConnectionError::WrongPeer { .. } => "WrongPeer",
        ConnectionError::MessageSizeMismatch { .. } => "MessageSizeMismatch",
        ConnectionError::Queue(_) => "Queue",
        _ => "other",
    }
}

/// The proxy only ever forwards a prefix of the bytes, faithfully, then closes or resets: the
/// peer sees end of file, a reset, or silence. A malformed frame, a protocol violation, a
/// rejected or unrecoverable handshake, a queue error means the two sides disagreed on the
/// stream: a bug, not a cut.
fn check_disconnect(who: &str, during: &str, error: &ConnectionError) {
    assert!(
        matches!(
            error,
            ConnectionError::Io { .. }
                | ConnectionError::Closed { .. }
                | ConnectionError::TimedOut { .. }
        ),
        "{who}: {during} failed with an error no cut explains: {error} ({error:?})"
    );
}

fn state_code(state: LinkState) -> u8 {
    match state {
        LinkState::Disconnected => 0,
        LinkState::Connecting => 1,
        LinkState::Handshaking => 2,
        LinkState::Connected => 3,
    }
}

/// Lets the other threads (the proxy's, the peer's) run after a round that moved nothing: two
/// busy loops and the proxy share two cores on a small machine.
fn idle(idle_rounds: &mut u32, moved: bool) {
    if moved {
        *idle_rounds = 0;
        return;
    }
    *idle_rounds += 1;
    if *idle_rounds < 16 {
        thread::yield_now();
    } else {
        thread::sleep(Duration::from_micros(20));
    }
}

fn run_server<const C: usize>(
    options: ConnectionOptions,
    shape: Shape,
    push_limit: u64,
    control: &Control,
    addr_tx: mpsc::Sender<std::net::SocketAddr>,
) -> Option<Report> {
    let _guard = AbortOnPanic(control);
    let mut acceptor =
        Acceptor::<C>::bind("server", "day1", AcceptorOptions::new(options)).expect("bind");
    addr_tx.send(acceptor.local_addr()).unwrap();
    let mut ep = Endpoint::new("server", S2C, shape, push_limit, control);
    control.sides[S2C].state.store(u8::MAX, Ordering::Relaxed);
    let mut idle_rounds = 0;
    loop {
        if let Some(finished) = ep.should_stop() {
            if !finished {
                return None;
            }
            break;
        }
        let t = now();
        let mut moved = false;
        while let Some(event) = acceptor.poll(t, |_| Ok(())) {
            match event {
                AcceptorEvent::LoggedIn { .. } => ep.report.logins += 1,
                AcceptorEvent::Failed { error, .. } => {
                    check_disconnect("server", "a login", &error);
                    *ep.report.errors.entry(variant(&error)).or_default() += 1;
                    ep.report.failed_logins += 1;
                }
                other => panic!("server: unexpected acceptor event {other:?}"),
            }
            moved = true;
        }
        let mut count = 0;
        let mut conns = acceptor.connections();
        for (_, conn) in &mut conns {
            count += 1;
            if let Err(error) = conn.poll(t) {
                ep.poll_error(&error);
            }
            moved |= ep.pump(conn);
        }
        drop(conns);
        assert!(count <= 1, "server: {count} connections for one client");
        idle(&mut idle_rounds, moved);
    }
    let conn = acceptor
        .connections()
        .next()
        .expect("the client's connection")
        .1;
    ep.report.stats = conn.stats();
    Some(ep.report)
}

fn run_client<const C: usize>(
    options: ConnectionOptions,
    shape: Shape,
    push_limit: u64,
    control: &Control,
    proxy_addr: std::net::SocketAddr,
) -> Option<Report> {
    let _guard = AbortOnPanic(control);
    let mut conn =
        Connection::<C>::client(proxy_addr, "client", "server", &options).expect("client");
    let mut ep = Endpoint::new("client", C2S, shape, push_limit, control);
    let mut idle_rounds = 0;
    loop {
        if let Some(finished) = ep.should_stop() {
            if !finished {
                return None;
            }
            break;
        }
        if let Err(error) = conn.poll(now()) {
            ep.poll_error(&error);
        }
        let moved = ep.pump(&mut conn);
        idle(&mut idle_rounds, moved);
    }
    ep.report.stats = conn.stats();
    Some(ep.report)
}

// ---------------------------------------------------------------------------------------------
// A run: both threads, the proxy, a driver deciding the faults, a drain, the checks.
// ---------------------------------------------------------------------------------------------

struct Scenario {
    name: &'static str,
    seed: u64,
    shape_max: u32,
    /// Messages each side pushes at most (the driver may stop them sooner).
    push_limit: u64,
    options: ConnectionOptions,
    plan: FaultPlan,
    limit: Duration,
    /// No message delivered for this long fails the run.
    stall: Duration,
}

struct Outcome {
    client: Report,
    server: Report,
    proxy: ProxyStats,
    elapsed: Duration,
}

/// Runs `scenario`: `drive` applies the faults (and stops the pushing when it wants); then the
/// proxy forwards faithfully until both sides are done, and the counts are checked.
fn run<const C: usize>(
    scenario: Scenario,
    drive: impl FnOnce(&Proxy, &Control, &mut (u64, Instant)),
) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let options = scenario.options.clone().dir(dir.path());
    let shape = Shape {
        seed: scenario.seed,
        max_len: scenario.shape_max.min(Connection::<C>::MAX_PAYLOAD),
    };
    let control = Control::new(scenario.limit);
    let limit = scenario.push_limit;
    let outcome = thread::scope(|s| {
        let (addr_tx, addr_rx) = mpsc::channel();
        let server = {
            let (options, control) = (options.clone(), &control);
            thread::Builder::new()
                .name("server".into())
                .spawn_scoped(s, move || {
                    run_server::<C>(options, shape, limit, control, addr_tx)
                })
                .unwrap()
        };
        let target = match addr_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(addr) => addr,
            Err(_) => std::panic::resume_unwind(server.join().unwrap_err()),
        };
        let proxy = Proxy::start(target, scenario.plan.clone(), scenario.seed);
        let client = {
            let (options, control, addr) = (options.clone(), &control, proxy.addr());
            thread::Builder::new()
                .name("client".into())
                .spawn_scoped(s, move || {
                    run_client::<C>(options, shape, limit, control, addr)
                })
                .unwrap()
        };
        let mut watch = (0, Instant::now());
        let driven = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drive(&proxy, &control, &mut watch);
            control.stop_push.store(true, Ordering::SeqCst);
            proxy.set_plan(FaultPlan::passthrough());
            while !control.both_done() {
                control.tick(&proxy, &mut watch, scenario.stall);
            }
        }));
        if driven.is_err() {
            control.abort.store(true, Ordering::SeqCst);
        }
        let (client, server) = (client.join(), server.join());
        // A side's own panic says more than the driver's "a side failed".
        for side in [&client, &server] {
            if let Err(payload) = side {
                eprintln!("{}: {}", scenario.name, control.describe(&proxy));
                std::panic::resume_unwind(Box::new(panic_text(payload)));
            }
        }
        if let Err(payload) = driven {
            std::panic::resume_unwind(payload);
        }
        let (Some(client), Some(server)) = (client.unwrap(), server.unwrap()) else {
            panic!("a side stopped early: {}", control.describe(&proxy));
        };
        Outcome {
            client,
            server,
            proxy: proxy.stats(),
            elapsed: control.started.elapsed(),
        }
    });
    let (c, s) = (&outcome.client, &outcome.server);
    assert_eq!(
        s.received, c.pushed,
        "the server received {} messages, the client pushed {}",
        s.received, c.pushed
    );
    assert_eq!(
        c.received, s.pushed,
        "the client received {} messages, the server pushed {}",
        c.received, s.pushed
    );
    eprintln!(
        "{} (seed {}): {:.2} s; proxy: {} cuts, {} connections, {} + {} bytes forwarded\n  \
         client: pushed {}, received {} ({} bytes checked), poll errors {} {:?}, {:?}\n  \
         server: pushed {}, received {} ({} bytes checked), poll errors {}, logins {}, \
         failed logins {} (errors {:?}), {:?}",
        scenario.name,
        scenario.seed,
        outcome.elapsed.as_secs_f64(),
        outcome.proxy.cuts,
        outcome.proxy.accepted,
        outcome.proxy.bytes_client_to_target,
        outcome.proxy.bytes_target_to_client,
        c.pushed,
        c.received,
        c.bytes_checked,
        c.poll_errors,
        c.errors,
        c.stats,
        s.pushed,
        s.received,
        s.bytes_checked,
        s.poll_errors,
        s.logins,
        s.failed_logins,
        s.errors,
        s.stats,
    );
    outcome
}

fn panic_text(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

/// Options that notice a cut soon and reconnect at once.
fn fast_options() -> ConnectionOptions {
    ConnectionOptions::new()
        .heartbeat_interval_ns(5_000_000)
        .peer_timeout_ns(400_000_000)
        .handshake_timeout_ns(400_000_000)
        .connect_timeout_ns(400_000_000)
        .reconnect_backoff_ns(1_000_000, 5_000_000)
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

/// The kinds of cut a phase makes.
#[derive(Clone, Copy, Debug)]
enum CutKind {
    /// 0..=300 bytes: in the hello (about 110 bytes each way), just after it, or in the first
    /// frames.
    Hello,
    /// A few KiB: in the first frames of the resend.
    Small,
    /// Up to 128 KiB: in the resend of the queued messages (the queue holds 64 KiB) or in new
    /// frames after it.
    Frame,
    /// Up to 384 KiB: well into the flow, in the middle of large frames.
    Large,
}

fn phase_plan(rng: &mut SplitMix64, kind: CutKind) -> FaultPlan {
    let (lo, hi, one_byte_ok) = match kind {
        CutKind::Hello => (0, 300, true),
        CutKind::Small => (300, 4096, true),
        CutKind::Frame => (4096, 128 << 10, false),
        CutKind::Large => (128 << 10, 384 << 10, false),
    };
    let hi = rng.range_inclusive(lo + (hi - lo) / 4, hi);
    FaultPlan {
        cut_after: Some((lo, hi)),
        cut_scope: if rng.below(2) == 0 {
            CutScope::PerDirection
        } else {
            CutScope::Total
        },
        cut_linger: if rng.below(2) == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(rng.range_inclusive(500, 10_000))
        },
        one_byte_writes: one_byte_ok && rng.below(3) == 0,
        delay: (rng.below(3) == 0).then(|| Duration::from_micros(rng.range_inclusive(20, 1000))),
        refuse: false,
    }
}

/// Runs phases of cut plans, cycling through `kinds`, until the proxy has cut `cuts`
/// connections; prints what each kind of phase did.
fn cut_phases<const C: usize>(
    name: &'static str,
    seed: u64,
    cuts: u64,
    kinds: &[CutKind],
    options: ConnectionOptions,
) -> Outcome {
    let mut rng = SplitMix64::new(seed ^ 0xFA17);
    let first = phase_plan(&mut rng, kinds[0]);
    let scenario = Scenario {
        name,
        seed,
        shape_max: u32::MAX,
        push_limit: u64::MAX,
        options,
        plan: first,
        limit: Duration::from_secs(240),
        stall: Duration::from_secs(20),
    };
    let mut phases = Vec::new();
    let outcome = run::<C>(scenario, |proxy, control, watch| {
        let mut phase = 0;
        loop {
            let start = proxy.stats().cuts;
            if start >= cuts {
                break;
            }
            let kind = kinds[phase % kinds.len()];
            if phase > 0 {
                proxy.set_plan(phase_plan(&mut rng, kind));
            }
            let goal = (start + rng.range_inclusive(10, 30)).min(cuts);
            let began = Instant::now();
            // A phase whose cuts come slowly (large budgets, a slow machine) gives way to the
            // next after a while; a stall of the deliveries themselves fails the test.
            while proxy.stats().cuts < goal && began.elapsed() < Duration::from_secs(3) {
                control.tick(proxy, watch, Duration::from_secs(20));
            }
            phases.push((
                kind,
                proxy.plan(),
                proxy.stats().cuts - start,
                began.elapsed(),
            ));
            phase += 1;
        }
    });
    let mut by_kind = std::collections::BTreeMap::new();
    for (kind, plan, made, took) in &phases {
        let entry =
            by_kind
                .entry(format!("{kind:?}"))
                .or_insert((0u64, 0u64, 0u64, Duration::ZERO));
        entry.0 += 1;
        entry.1 += made;
        entry.2 += u64::from(plan.one_byte_writes);
        entry.3 += *took;
    }
    eprintln!(
        "  {} phases; by kind (phases, cuts, one-byte phases, time): {by_kind:?}",
        phases.len()
    );
    assert!(
        outcome.proxy.cuts >= cuts,
        "{} cuts, {cuts} asked",
        outcome.proxy.cuts
    );
    assert!(outcome.client.stats.handshakes > 1 && outcome.client.stats.resent > 0);
    outcome
}

/// The test: 1000 cuts (`SHM_TCP_CUTS`) at random points, with random message sizes
/// both ways at once; nothing lost, nothing duplicated, order kept, every byte checked.
#[test]
fn thousand_cuts_both_ways() {
    let kinds = [
        CutKind::Hello,
        CutKind::Small,
        CutKind::Frame,
        CutKind::Large,
    ];
    cut_phases::<65536>(
        "thousand_cuts_both_ways",
        seed(0x5EED_F00D_0000_0001),
        env_u64("SHM_TCP_CUTS", 1000),
        &kinds,
        fast_options(),
    );
}

/// With a key the handshake has two more frames (the authentication codes): cuts in and
/// around them (`SHM_TCP_KEYED_CUTS`, default 200) must never look like a wrong key.
#[test]
fn keyed_handshake_cut_anywhere() {
    let kinds = [
        CutKind::Hello,
        CutKind::Small,
        CutKind::Hello,
        CutKind::Frame,
    ];
    cut_phases::<65536>(
        "keyed_handshake_cut_anywhere",
        seed(0x5EED_F00D_0000_0004),
        env_u64("SHM_TCP_KEYED_CUTS", 200),
        &kinds,
        fast_options().key(b"fault proxy test key".to_vec()),
    );
}

/// The checks themselves: a message passes as pushed, and fails when any byte, its length,
/// its tag or its place in the stream is off.
#[test]
fn the_checks_catch_damage() {
    let shape = Shape {
        seed: 7,
        max_len: 4096,
    };
    let fails = |seq: u64, tag: u16, payload: &[u8]| shape.verify(C2S, seq, tag, payload).is_err();
    let mut seen_short = false;
    for seq in 0..200 {
        let len = shape.len(C2S, seq) as usize;
        seen_short |= len < 8;
        let tag = shape.tag(C2S, seq);
        let mut payload = vec![0; len];
        shape.fill(C2S, seq, &mut payload);
        shape.check("test", C2S, seq, tag, &payload);
        assert!(fails(seq, tag ^ 1, &payload));
        assert!(fails(seq + 1, shape.tag(C2S, seq + 1), &payload));
        if len > 0 {
            assert!(fails(seq, tag, &payload[..len - 1]));
            for i in [0, len / 2, len - 1] {
                let mut bad = payload.clone();
                bad[i] ^= 0x40;
                assert!(fails(seq, tag, &bad), "message {seq}: byte {i} of {len}");
            }
        }
        // The other stream's message of the same number is not this one.
        let other_len = shape.len(S2C, seq) as usize;
        let mut other = vec![0; other_len];
        shape.fill(S2C, seq, &mut other);
        if other_len > 0 || len > 0 {
            assert!(fails(seq, shape.tag(S2C, seq), &other) || other == payload);
        }
    }
    assert!(
        seen_short,
        "the sizes include payloads shorter than a sequence number"
    );
}

#[test]
fn one_byte_writes_reassemble_frames() {
    let seed = seed(0x5EED_F00D_0000_0002);
    let messages = env_u64("SHM_TCP_ONE_BYTE_MESSAGES", 3000);
    let scenario = Scenario {
        name: "one_byte_writes_reassemble_frames",
        seed,
        shape_max: 1024,
        push_limit: messages,
        options: fast_options().peer_timeout_ns(5_000_000_000),
        plan: FaultPlan {
            one_byte_writes: true,
            ..FaultPlan::passthrough()
        },
        limit: Duration::from_secs(240),
        stall: Duration::from_secs(20),
    };
    let outcome = run::<65536>(scenario, |proxy, control, watch| {
        // Wait until both sides pushed everything, still through one-byte writes.
        while control.sides.iter().any(|s| {
            let total = s.pushed_total.load(Ordering::SeqCst);
            total == u64::MAX || s.received.load(Ordering::SeqCst) < messages
        }) {
            control.tick(proxy, watch, Duration::from_secs(20));
        }
    });
    for report in [&outcome.client, &outcome.server] {
        assert_eq!(report.pushed, messages);
        assert_eq!(report.received, messages);
        assert_eq!(report.poll_errors, 0, "no cut, so no error: {report:?}");
        assert_eq!(report.stats.handshakes, 1, "{report:?}");
    }
    assert_eq!(outcome.proxy.cuts, 0);
}

#[test]
fn cuts_during_resend_of_a_large_backlog() {
    const C: usize = 16 << 20;
    let seed = seed(0x5EED_F00D_0000_0003);
    let cuts = env_u64("SHM_TCP_RESEND_CUTS", 30);
    let max = Connection::<C>::MAX_PAYLOAD;
    let scenario = Scenario {
        name: "cuts_during_resend_of_a_large_backlog",
        seed,
        shape_max: 256 << 10,
        push_limit: u64::MAX,
        options: fast_options().receive_buffer(32 << 20, max),
        plan: FaultPlan::passthrough(),
        limit: Duration::from_secs(240),
        stall: Duration::from_secs(20),
    };
    let mut backlog = [0u64; 2];
    let mut backlog_at_cut = Vec::new();
    let outcome = run::<C>(scenario, |proxy, control, watch| {
        let stall = Duration::from_secs(20);
        // Both sides connected and exchanging.
        while control
            .sides
            .iter()
            .any(|s| s.received.load(Ordering::SeqCst) < 50)
        {
            control.tick(proxy, watch, stall);
        }
        // Refuse reconnects and cut: both queues fill up (16 MiB each) while apart:
        // more than the sockets hold, so the resends meet full sockets and partial writes.
        proxy.set_plan(FaultPlan {
            refuse: true,
            cut_linger: Duration::ZERO,
            ..FaultPlan::passthrough()
        });
        proxy.cut_all_now();
        let full = |s: &SideShared| s.unacked.load(Ordering::SeqCst) >= 10;
        let began = Instant::now();
        loop {
            let pushed = control
                .sides
                .iter()
                .map(|s| s.pushed.load(Ordering::SeqCst))
                .collect::<Vec<_>>();
            // Nothing is delivered meanwhile: keep the stall watch from firing.
            *watch = (control.progress(), Instant::now());
            thread::sleep(Duration::from_millis(50));
            let same = control
                .sides
                .iter()
                .zip(&pushed)
                .all(|(s, p)| s.pushed.load(Ordering::SeqCst) == *p);
            if same && control.sides.iter().all(full) {
                break;
            }
            assert!(
                began.elapsed() < Duration::from_secs(20),
                "the queues did not fill: {}",
                control.describe(proxy)
            );
        }
        for (i, side) in control.sides.iter().enumerate() {
            backlog[i] = side.unacked.load(Ordering::SeqCst);
        }
        // Let them in again, cutting each connection: each reconnect resends a full queue
        // (both sides keep pushing, so the queues stay about full), and half of the
        // connections forward slowly, so the sender's socket fills and a cut can fall behind a
        // partial write.
        let start = proxy.stats().cuts;
        let plan_for = |rng: &mut SplitMix64| FaultPlan {
            // Budgets spread evenly over the powers of two from 1 KiB to 16 MiB: most land
            // inside the resend, some past it, in the frames behind a partial write.
            cut_after: Some({
                let hi = 1u64 << rng.range_inclusive(10, 24);
                (hi / 2, hi)
            }),
            cut_scope: if rng.below(2) == 0 {
                CutScope::PerDirection
            } else {
                CutScope::Total
            },
            cut_linger: if rng.below(2) == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(2)
            },
            delay: (rng.below(2) == 0)
                .then(|| Duration::from_micros(rng.range_inclusive(50, 1000))),
            ..FaultPlan::passthrough()
        };
        let mut rng = SplitMix64::new(seed ^ 0xBAC0);
        proxy.set_plan(plan_for(&mut rng));
        let mut seen = start;
        while seen < start + cuts {
            control.tick(proxy, watch, stall);
            let now_cuts = proxy.stats().cuts;
            if now_cuts != seen {
                seen = now_cuts;
                proxy.set_plan(plan_for(&mut rng));
                let unacked = control
                    .sides
                    .iter()
                    .map(|s| s.unacked.load(Ordering::SeqCst))
                    .min()
                    .unwrap();
                backlog_at_cut.push(unacked);
            }
        }
    });
    eprintln!(
        "  backlog when the proxy let them in (messages): client {}, server {}; \
         fewer unacknowledged of the two at each cut: {backlog_at_cut:?}",
        backlog[0], backlog[1]
    );
    for report in [&outcome.client, &outcome.server] {
        assert!(
            report.stats.resent > 0,
            "a reconnect resent the backlog: {report:?}"
        );
    }
    // Most cuts found a long resend under way (the queues hold a few hundred messages).
    let deep = backlog_at_cut.iter().filter(|&&n| n >= 20).count();
    assert!(
        deep * 2 >= backlog_at_cut.len() && !backlog_at_cut.is_empty(),
        "{backlog_at_cut:?}"
    );
}
