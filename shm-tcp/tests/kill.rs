//! Crash tests across real processes: a server (an [`Acceptor`] on a fixed loopback port) and a
//! client ([`Connection::client`]) stream messages of random sizes, from empty to
//! [`Connection::MAX_PAYLOAD`], to each other over TCP, while the parent `SIGKILL`s one of them
//! at random moments (20 to 300 ms apart, each once the victim streams both ways again), reaps
//! it and starts it again: twenty times, half on each side, in a seeded random order, and now
//! and then once more while the new process starts. Every message must arrive exactly once, in
//! order, intact, in both directions, across the kills of the sender and of the receiver: a
//! child stops at once, with an exit code of its own ([`EXIT_GAP`], [`EXIT_DUPLICATE`],
//! [`EXIT_CORRUPT`], ...), on the first gap, duplicate or corrupted byte. A run takes 3 to 8 s
//! in a debug build on two cores and moves some 30 000 to 250 000 messages each way.
//!
//! The children are this test binary re-executed with the ignored test [`role_stream_end`] and
//! their parameters in the environment (`TCP_KILL_*`): a role, the shared folder of the state
//! files, the address, a deadline. Each dies with its parent (`PR_SET_PDEATHSIG`) or at its
//! deadline, so nothing keeps running if the parent fails; everything lives in a temporary
//! folder removed at the end.
//!
//! # What each side knows after a `kill -9`
//!
//! Nothing but what the library persisted: a restarted sender resumes at
//! [`Connection::next_seq`] (its send queue keeps what the peer has not popped), a restarted
//! receiver expects message [`Connection::popped`] (its pop count, whose store is the pop's
//! commit). Every message is a function of its direction and sequence number (length, tag, every
//! byte), so a restarted sender makes exactly the message its predecessor would have, and the
//! receiver checks the message at its front against `popped()` before popping it: the payload
//! starts with the sequence number (the tag carries its low 16 bits, for payloads shorter than
//! 8 bytes), then a key of (direction, number), then bytes cut from a random pool at an offset
//! the key picks. A lost message is a gap, a redelivered one a duplicate, both seen at once.
//!
//! The content check cannot see a sender that forgets a message it pushed, or a receiver whose
//! pop count goes back: either side would simply make, or expect, that message again. So each
//! child also keeps a ledger of its own (`<role>.ledger`: messages pushed, messages popped),
//! written with one `pwrite` after every push and every pop, which a `kill -9` leaves in the page
//! cache. A kill can land between the library's commit and the ledger's write, never the other
//! way, so a restarted child checks `ledger <= persisted <= ledger + 1` for both counts
//! ([`EXIT_LEDGER`]), and counts how often the kill fell in between.
//!
//! Each child also rewrites a small progress file (`<role>.progress`: pid, sent, popped, ...)
//! every few milliseconds. The parent uses them to kill only a child that streams (both ways
//! since its start), and for the end: it asks both to stop sending (a `drain` file), waits until
//! each has popped everything the other sent and every message is acknowledged, then asks both
//! to exit (a `stop` file) and checks the counts.
//!
//! Options in the environment: `TCP_KILL_SEED` (the kill schedule's seed, printed on each run)
//! and `TCP_KILL_KILLS` (mid-stream kills, default 20).

mod common;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shm_tcp::{
    Acceptor, AcceptorEvent, AcceptorOptions, Connection, ConnectionError, ConnectionOptions,
};
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendError, SendSlot};

/// Send queue capacity: small, so that `Full`, wrap-around and padding happen all the time
/// (two maximum messages fill it).
const C: usize = 64 * 1024;
type Conn = Connection<C>;
const MAX_PAYLOAD: u32 = Conn::MAX_PAYLOAD;

const SERVER: &str = "server";
const CLIENT: &str = "client";
const SESSION: &str = "day1";

/// A child's exit codes (the harness exits with 101 on a panic).
const EXIT_GAP: i32 = 3;
const EXIT_DUPLICATE: i32 = 4;
const EXIT_CORRUPT: i32 = 5;
/// A connection error that a kill cannot explain (recovery refused, protocol, bad ack, ...).
const EXIT_LINK: i32 = 6;
/// The persisted counts disagree with the child's own ledger of its pushes and pops.
const EXIT_LEDGER: i32 = 7;
const EXIT_DEADLINE: i32 = 8;

/// How long a child may live at most, and how long the parent waits for any one thing.
const CHILD_LIFETIME: Duration = Duration::from_secs(120);
const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// How often a child rewrites its progress file and looks for the parent's `drain` and `stop`.
const REPORT_EVERY: Duration = Duration::from_millis(5);

fn describe_exit(status: ExitStatus) -> String {
    let what = match status.code() {
        Some(EXIT_GAP) => "a GAP",
        Some(EXIT_DUPLICATE) => "a DUPLICATE",
        Some(EXIT_CORRUPT) => "a corrupted message",
        Some(EXIT_LINK) => "a connection error no kill explains",
        Some(EXIT_LEDGER) => "persisted counts that disagree with its ledger",
        Some(EXIT_DEADLINE) => "its deadline",
        Some(101) => "a panic",
        _ => "?",
    };
    format!("{status} ({what})")
}

// ---------------------------------------------------------------------------------------------
// Messages: everything is a function of (direction, sequence number).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Server => SERVER,
            Role::Client => CLIENT,
        }
    }

    fn peer(self) -> Role {
        match self {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The direction this role sends: its index (0 server → client, 1 client → server).
    fn outgoing(self) -> u64 {
        self as u64
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn message_key(direction: u64, seq: u64) -> u64 {
    splitmix(seq ^ ((direction + 1) << 56))
}

/// Payload length of message `seq`: mostly small (many messages a second in a debug build),
/// some up to 4 KiB, some of any size, and now and then exactly empty or exactly the maximum.
fn message_len(direction: u64, seq: u64) -> u32 {
    let key = message_key(direction, seq);
    let random = key >> 10;
    let max = u64::from(MAX_PAYLOAD);
    let len = match key % 1024 {
        0..=3 => max,
        4..=11 => 0,
        12..=23 => random % (max + 1),
        24..=127 => random % 4097,
        _ => random % 65,
    };
    len as u32
}

/// The tag carries the low bits of the sequence number, so even an empty message is identified.
fn message_tag(seq: u64) -> u16 {
    seq as u16
}

/// Random bytes the message bodies are cut from.
struct Pool(Vec<u8>);

impl Pool {
    const SLACK: usize = 4096;

    fn new() -> Self {
        let mut state = 0x7C9_5EED_u64;
        let bytes = (0..(MAX_PAYLOAD as usize + Self::SLACK).div_ceil(8))
            .flat_map(|_| {
                state = splitmix(state);
                state.to_le_bytes()
            })
            .collect();
        Self(bytes)
    }

    /// Writes message `seq` of `direction` into `payload` (of its length): the sequence number
    /// (8 bytes), the key (8 bytes), then the body, all cut to the payload's length.
    fn fill(&self, direction: u64, seq: u64, payload: &mut [u8]) {
        let key = message_key(direction, seq);
        let mut prefix = [0; 16];
        prefix[..8].copy_from_slice(&seq.to_le_bytes());
        prefix[8..].copy_from_slice(&key.to_le_bytes());
        let cut = payload.len().min(16);
        payload[..cut].copy_from_slice(&prefix[..cut]);
        let start = (key >> 40) as usize % Self::SLACK;
        let body = payload.len() - cut;
        payload[cut..].copy_from_slice(&self.0[start..start + body]);
    }

    /// Checks that (`tag`, `payload`) is message `expected` of `direction`, intact: `Err` with
    /// the exit code and a description on the first difference.
    fn check(
        &self,
        direction: u64,
        expected: u64,
        tag: u16,
        payload: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), (i32, String)> {
        let found = match payload.get(..8) {
            Some(seq) => Some(u64::from_le_bytes(seq.try_into().unwrap())),
            None if tag != message_tag(expected) => {
                // A short message: its tag says how far off (modulo 2^16).
                let ahead = tag.wrapping_sub(message_tag(expected)) as i16;
                Some(expected.wrapping_add_signed(i64::from(ahead)))
            }
            None => None,
        };
        match found {
            Some(seq) if seq < expected => {
                return Err((
                    EXIT_DUPLICATE,
                    format!("DUPLICATE: expected message {expected}, got {seq} again"),
                ))
            }
            Some(seq) if seq > expected => {
                return Err((
                    EXIT_GAP,
                    format!("GAP: expected message {expected}, got {seq}"),
                ))
            }
            _ => {}
        }
        let len = message_len(direction, expected) as usize;
        if tag != message_tag(expected) || payload.len() != len {
            return Err((
                EXIT_CORRUPT,
                format!(
                    "message {expected}: tag {tag} and {} bytes instead of tag {} and {len} bytes",
                    payload.len(),
                    message_tag(expected)
                ),
            ));
        }
        scratch.resize(len, 0);
        self.fill(direction, expected, scratch);
        if payload != &scratch[..] {
            let at = payload.iter().zip(scratch.iter()).position(|(a, b)| a != b);
            return Err((
                EXIT_CORRUPT,
                format!("message {expected} ({len} bytes): corrupted at byte {at:?}"),
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Progress files.

/// A child's report, rewritten every few milliseconds (write a temporary file, rename it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    pid: u32,
    /// `next_seq()`: messages pushed in all.
    sent: u64,
    /// `popped()`: the peer's messages popped in all.
    popped: u64,
    /// `unacknowledged()`.
    unacked: u64,
    /// Pushed and popped by this incarnation.
    own_sent: u64,
    own_popped: u64,
    /// Messages its connection resent after handshakes, and handshakes, in this incarnation.
    resent: u64,
    handshakes: u64,
    /// 1 once it has stopped sending for good (after the parent's `drain`).
    drained: u64,
    /// At this incarnation's start, the persisted count was one ahead of the ledger (the
    /// predecessor was killed between a commit and its ledger write): pushes, pops.
    ahead_sent: u64,
    ahead_popped: u64,
}

impl Progress {
    fn path(dir: &Path, role: Role) -> PathBuf {
        dir.join(format!("{}.progress", role.name()))
    }

    fn read(dir: &Path, role: Role) -> Option<Self> {
        let text = std::fs::read_to_string(Self::path(dir, role)).ok()?;
        let n: Vec<u64> = text
            .split_whitespace()
            .map(|word| word.parse().unwrap())
            .collect();
        let [pid, sent, popped, unacked, own_sent, own_popped, resent, handshakes, drained, ahead_sent, ahead_popped] =
            n[..]
        else {
            panic!("malformed progress file: {text:?}");
        };
        Some(Self {
            pid: pid as u32,
            sent,
            popped,
            unacked,
            own_sent,
            own_popped,
            resent,
            handshakes,
            drained,
            ahead_sent,
            ahead_popped,
        })
    }

    fn write(&self, dir: &Path, role: Role) {
        let path = Self::path(dir, role);
        let tmp = path.with_extension("tmp");
        let text = format!(
            "{} {} {} {} {} {} {} {} {} {} {}\n",
            self.pid,
            self.sent,
            self.popped,
            self.unacked,
            self.own_sent,
            self.own_popped,
            self.resent,
            self.handshakes,
            self.drained,
            self.ahead_sent,
            self.ahead_popped
        );
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The child.

fn child_env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} not set: run only as a child role"))
}

fn fail(role: Role, code: i32, why: &str) -> ! {
    eprintln!(
        "kill test {} (pid {}): {why}",
        role.name(),
        std::process::id()
    );
    std::process::exit(code)
}

/// Disconnects a kill explains: the peer's socket closed or reset, a refused connect while the
/// server restarts, a handshake cut short. Anything else is a failure.
fn explained_by_a_kill(error: &ConnectionError) -> bool {
    matches!(
        error,
        ConnectionError::Io { .. }
            | ConnectionError::Closed { .. }
            | ConnectionError::TimedOut { .. }
    )
}

/// One side's streams: what it sends and what it checks.
struct Stream {
    role: Role,
    dir: PathBuf,
    pool: Pool,
    scratch: Vec<u8>,
    rng: u64,
    /// `<role>.ledger`: this side's own count of its pushes and of its pops, written after each.
    ledger: std::fs::File,
    /// What the ledger said at the start, checked against the persisted counts once.
    ledger_at_start: [u64; 2],
    checked_start: bool,
    progress: Progress,
    draining: bool,
}

impl Stream {
    fn new(role: Role, dir: PathBuf) -> Self {
        let ledger = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(format!("{}.ledger", role.name())))
            .unwrap();
        let mut words = [0u8; 16];
        let read = ledger.read_at(&mut words, 0).unwrap();
        assert!(read == 0 || read == 16, "a torn ledger: {read} bytes");
        let word = |i: usize| u64::from_le_bytes(words[i * 8..i * 8 + 8].try_into().unwrap());
        Self {
            role,
            pool: Pool::new(),
            scratch: Vec::new(),
            rng: splitmix(u64::from(std::process::id()) ^ role as u64),
            ledger,
            ledger_at_start: [word(0), word(1)],
            checked_start: false,
            progress: Progress {
                pid: std::process::id(),
                ..Progress::default()
            },
            draining: false,
            dir,
        }
    }

    /// Records this side's counts (one aligned 16-byte `pwrite`: the page cache has it, whatever
    /// happens to the process next).
    fn write_ledger(&self, sent: u64, popped: u64) {
        let mut words = [0u8; 16];
        words[..8].copy_from_slice(&sent.to_le_bytes());
        words[8..].copy_from_slice(&popped.to_le_bytes());
        self.ledger.write_all_at(&words, 0).unwrap();
    }

    fn random(&mut self) -> u64 {
        self.rng = splitmix(self.rng);
        self.rng
    }

    /// Sends a burst and checks and pops what arrived; whether anything moved.
    fn step(&mut self, conn: &mut Conn) -> bool {
        if !self.checked_start {
            self.checked_start = true;
            let [sent, popped] = self.ledger_at_start;
            let (next_seq, persisted_popped) = (conn.next_seq(), conn.popped());
            let within =
                |persisted: u64, ledger: u64| persisted >= ledger && persisted <= ledger + 1;
            if !within(next_seq, sent) || !within(persisted_popped, popped) {
                fail(
                    self.role,
                    EXIT_LEDGER,
                    &format!(
                        "{} at the start: next_seq {next_seq} and popped {persisted_popped}, \
                         but the ledger says {sent} pushed and {popped} popped",
                        if next_seq < sent || persisted_popped < popped {
                            "LOST COMMITS"
                        } else {
                            "PHANTOM COMMITS"
                        }
                    ),
                );
            }
            self.progress.ahead_sent = next_seq - sent;
            self.progress.ahead_popped = persisted_popped - popped;
            // Brought up to date before anything else moves.
            self.write_ledger(next_seq, persisted_popped);
        }
        let role = self.role;
        let (outgoing, incoming) = (role.outgoing(), role.peer().outgoing());
        let mut moved = false;
        if !self.draining {
            let burst = 1 + self.random() % 16;
            let mut unflushed = false;
            for _ in 0..burst {
                let seq = conn.next_seq();
                let more = self.random().is_multiple_of(4);
                match conn.alloc(message_len(outgoing, seq), message_tag(seq)) {
                    Ok(mut slot) => {
                        self.pool.fill(outgoing, seq, slot.payload_mut());
                        if more {
                            slot.push_more();
                            unflushed = true;
                        } else {
                            slot.push();
                        }
                    }
                    Err(SendError::Full) => break,
                    Err(error) => {
                        fail(role, EXIT_LINK, &format!("alloc of message {seq}: {error}"))
                    }
                }
                if conn.next_seq() != seq + 1 {
                    fail(
                        role,
                        EXIT_LINK,
                        &format!("pushed message {seq}, next_seq is {}", conn.next_seq()),
                    );
                }
                self.write_ledger(seq + 1, conn.popped());
                self.progress.own_sent += 1;
                moved = true;
            }
            if unflushed {
                let _ = conn.flush_queued();
            }
        }
        for _ in 0..32 {
            let expected = conn.popped();
            match conn.front() {
                Ok(message) => {
                    let checked = self.pool.check(
                        incoming,
                        expected,
                        message.tag(),
                        message.payload(),
                        &mut self.scratch,
                    );
                    if let Err((code, why)) = checked {
                        fail(role, code, &why);
                    }
                }
                Err(RecvError::Empty) => break,
                Err(error) => fail(role, EXIT_LINK, &format!("front: {error}")),
            }
            if let Err(error) = conn.pop() {
                fail(
                    role,
                    EXIT_LINK,
                    &format!("pop of message {expected}: {error}"),
                );
            }
            if conn.popped() != expected + 1 {
                fail(
                    role,
                    EXIT_LINK,
                    &format!("popped message {expected}, popped() is {}", conn.popped()),
                );
            }
            self.write_ledger(conn.next_seq(), expected + 1);
            self.progress.own_popped += 1;
            moved = true;
        }
        moved
    }

    /// Rewrites the progress file; then `true` if the parent asks this child to exit. A
    /// `drain` request stops the sending for good (reported as `drained` from then on).
    fn report(&mut self, conn: Option<&Conn>) -> bool {
        if !self.draining && self.dir.join("drain").exists() {
            self.draining = true;
        }
        if let Some(conn) = conn {
            let stats = conn.stats();
            self.progress.sent = conn.next_seq();
            self.progress.popped = conn.popped();
            self.progress.unacked = conn.unacknowledged();
            self.progress.resent = stats.resent;
            self.progress.handshakes = stats.handshakes;
            self.progress.drained = u64::from(self.draining);
            self.progress.write(&self.dir, self.role);
        }
        self.dir.join("stop").exists()
    }
}

/// Child role: the server or the client of the kill test, by `TCP_KILL_ROLE`.
#[test]
#[ignore = "child role of the kill test"]
fn role_stream_end() {
    // Die with the parent's test thread; the deadline covers a parent that died before this.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).unwrap();
    let role = match child_env("TCP_KILL_ROLE").as_str() {
        "server" => Role::Server,
        "client" => Role::Client,
        other => panic!("TCP_KILL_ROLE={other}"),
    };
    let dir = PathBuf::from(child_env("TCP_KILL_DIR"));
    let addr: SocketAddr = child_env("TCP_KILL_ADDR").parse().unwrap();
    let deadline =
        UNIX_EPOCH + Duration::from_millis(child_env("TCP_KILL_DEADLINE_MS").parse().unwrap());
    let options = ConnectionOptions::new()
        .dir(&dir)
        // Reconnect soon after the server restarts.
        .reconnect_backoff_ns(2_000_000, 50_000_000)
        // A small receive buffer (two maximum frames and a little), so it fills and wraps.
        .receive_buffer(3 * MAX_PAYLOAD as usize, MAX_PAYLOAD);
    let mut stream = Stream::new(role, dir);
    match role {
        Role::Server => serve(&mut stream, addr, options, deadline),
        Role::Client => connect(&mut stream, addr, options, deadline),
    }
}

fn check_deadline(role: Role, deadline: SystemTime) {
    if SystemTime::now() > deadline {
        fail(role, EXIT_DEADLINE, "deadline passed");
    }
}

fn serve(stream: &mut Stream, addr: SocketAddr, options: ConnectionOptions, deadline: SystemTime) {
    let role = stream.role;
    // The killed predecessor was reaped, so its socket is closed; std's listener sets
    // SO_REUSEADDR, so its connections' TIME_WAIT does not hold the port.
    let acceptor_options = AcceptorOptions::new(options).listen_on(addr);
    let mut acceptor = Acceptor::<C>::bind(SERVER, SESSION, acceptor_options)
        .unwrap_or_else(|error| fail(role, EXIT_LINK, &format!("bind {addr}: {error}")));
    let mut last_report = Instant::now();
    loop {
        let now = common::now();
        while let Some(event) = acceptor.poll(now, |login| {
            if login.client.as_str() == CLIENT {
                Ok(())
            } else {
                Err(format!("unknown client {}", login.client))
            }
        }) {
            match event {
                AcceptorEvent::LoggedIn { .. } => {}
                AcceptorEvent::Failed { error, .. } if explained_by_a_kill(&error) => {}
                other => fail(role, EXIT_LINK, &format!("acceptor: {other:?}")),
            }
        }
        let mut moved = false;
        let conn = acceptor.find(CLIENT).and_then(|id| acceptor.connection(id));
        if let Some(conn) = conn {
            if let Err(error) = conn.poll(now) {
                if !explained_by_a_kill(&error) {
                    fail(role, EXIT_LINK, &format!("poll: {error}"));
                }
            }
            moved = stream.step(conn);
        }
        if last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            let conn = acceptor.find(CLIENT).and_then(|id| acceptor.connection(id));
            if stream.report(conn.as_deref()) {
                return;
            }
            check_deadline(role, deadline);
        }
        if !moved {
            // Two cores for two children and the parent: never spin without yielding.
            std::thread::yield_now();
        }
    }
}

fn connect(
    stream: &mut Stream,
    addr: SocketAddr,
    options: ConnectionOptions,
    deadline: SystemTime,
) {
    let role = stream.role;
    let mut conn = Conn::client(addr, CLIENT, SERVER, &options)
        .unwrap_or_else(|error| fail(role, EXIT_LINK, &format!("open: {error}")));
    let mut last_report = Instant::now();
    loop {
        if let Err(error) = conn.poll(common::now()) {
            if !explained_by_a_kill(&error) {
                fail(role, EXIT_LINK, &format!("poll: {error}"));
            }
        }
        let moved = stream.step(&mut conn);
        if last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            if stream.report(Some(&conn)) {
                return;
            }
            check_deadline(role, deadline);
        }
        if !moved {
            std::thread::yield_now();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// A small deterministic random source for the kill schedule (its seed is printed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = splitmix(self.0);
        self.0 % bound
    }

    /// A number in `low..=high`.
    fn within(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }
}

/// A free loopback port for every server incarnation, below the kernel's ephemeral range: while
/// the server is down, no `connect` on the machine may take it as its source port (which would
/// hold the port against the restarted server's `bind`), nor may the client's own reconnects
/// connect the socket to itself (a TCP simultaneous open on a port in that range). Falls back to
/// a port the kernel picks when the range leaves no room below it.
fn free_port_outside_the_ephemeral_range() -> SocketAddr {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let mut rng = Rng(splitmix(u64::from(std::process::id()) ^ common::now()));
    if low > 12_000 {
        for _ in 0..200 {
            let port = rng.within(10_000, u64::from(low) - 1) as u16;
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                return listener.local_addr().unwrap();
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Both children, their folder and address.
struct Run {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    deadline: SystemTime,
    children: [Option<Child>; 2],
    /// Per role: mid-stream kills, kills while starting.
    kills: [u32; 2],
    early_kills: [u32; 2],
    /// Summed over the killed incarnations (their last reports).
    resent: u64,
    handshakes: u64,
    /// Restarts that found a push, or a pop, committed but not yet in the ledger.
    ahead: [u64; 2],
}

impl Run {
    fn new() -> Self {
        // The state files are shared mappings: keep them in memory where the system can.
        let dir = if Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm")
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        let addr = free_port_outside_the_ephemeral_range();
        Self {
            dir,
            addr,
            deadline: SystemTime::now() + CHILD_LIFETIME,
            children: [None, None],
            kills: [0; 2],
            early_kills: [0; 2],
            resent: 0,
            handshakes: 0,
            ahead: [0; 2],
        }
    }

    fn progress(&self, role: Role) -> Option<Progress> {
        Progress::read(self.dir.path(), role)
    }

    fn spawn(&mut self, role: Role) {
        assert!(self.children[role.index()].is_none());
        let deadline_ms = self
            .deadline
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "role_stream_end",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TCP_KILL_ROLE", role.name())
            .env("TCP_KILL_DIR", self.dir.path())
            .env("TCP_KILL_ADDR", self.addr.to_string())
            .env("TCP_KILL_DEADLINE_MS", deadline_ms.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.children[role.index()] = Some(child);
    }

    /// Adds an incarnation's last report to the totals.
    fn count(&mut self, last: Progress) {
        self.resent += last.resent;
        self.handshakes += last.handshakes;
        self.ahead[0] += last.ahead_sent;
        self.ahead[1] += last.ahead_popped;
    }

    fn pid(&self, role: Role) -> u32 {
        self.children[role.index()].as_ref().unwrap().id()
    }

    /// `kill -9`s `role`'s child and reaps it (so its sockets and locks are gone before the next
    /// incarnation starts), checking it was still running.
    fn kill(&mut self, role: Role) {
        let mut child = self.children[role.index()].take().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, Signal::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(Signal::SIGKILL as i32),
            "{} ended before it was killed: {}",
            role.name(),
            describe_exit(status)
        );
    }

    /// Fails at once if a child has exited: until the parent asks, none may.
    fn check_children(&mut self) {
        for role in [Role::Server, Role::Client] {
            if let Some(child) = self.children[role.index()].as_mut() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!(
                        "{} (pid {}) exited on its own: {}",
                        role.name(),
                        child.id(),
                        describe_exit(status)
                    );
                }
            }
        }
    }

    /// Sleeps for `duration`, checking the children all along.
    fn sleep(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            self.check_children();
            std::thread::sleep(Duration::from_millis(2).min(until - Instant::now()));
        }
    }

    /// Waits until `what` holds of both children's reports.
    fn wait_for(&mut self, why: &str, what: impl Fn(&Self, Progress, Progress) -> bool) {
        let limit = Instant::now() + WAIT_LIMIT;
        loop {
            if let (Some(server), Some(client)) =
                (self.progress(Role::Server), self.progress(Role::Client))
            {
                if what(self, server, client) {
                    return;
                }
            }
            self.check_children();
            assert!(
                Instant::now() < limit,
                "waited {WAIT_LIMIT:?} for {why}: server {:?}, client {:?}",
                self.progress(Role::Server),
                self.progress(Role::Client)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until `role`'s current incarnation has pushed and popped at least one message:
    /// it recovered, (re)connected and streams both ways.
    fn wait_until_streaming(&mut self, role: Role) {
        let pid = self.pid(role);
        self.wait_for(
            &format!("{} (pid {pid}) to stream", role.name()),
            |_, s, c| {
                let report = if role == Role::Server { s } else { c };
                report.pid == pid && report.own_sent > 0 && report.own_popped > 0
            },
        );
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // On a failed assertion, leave no child running.
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Streams both ways between a server and a client process while killing either with `SIGKILL`
/// at random moments (20 times by default, half each side), then drains both streams and checks
/// that every message arrived exactly once, in order, intact.
#[test]
fn kill_9_either_side_mid_stream_loses_and_duplicates_nothing() {
    let seed = std::env::var("TCP_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                ^ u64::from(std::process::id())
        });
    let kills: usize = std::env::var("TCP_KILL_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!("TCP_KILL_SEED={seed}");
    let started = Instant::now();
    let mut rng = Rng(seed);
    let mut run = Run::new();
    println!(
        "server on {}, state files in {}",
        run.addr,
        run.dir.path().display()
    );
    run.spawn(Role::Server);
    run.spawn(Role::Client);
    run.wait_until_streaming(Role::Server);
    run.wait_until_streaming(Role::Client);

    // Half the kills on each side, in a seeded random order.
    let mut victims: Vec<Role> = (0..kills)
        .map(|k| {
            if k % 2 == 0 {
                Role::Server
            } else {
                Role::Client
            }
        })
        .collect();
    for i in (1..victims.len()).rev() {
        victims.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for &victim in &victims {
        run.sleep(Duration::from_millis(rng.within(20, 300)));
        let last = run.progress(victim).unwrap();
        assert_eq!(last.pid, run.pid(victim), "{} reports late", victim.name());
        run.count(last);
        run.kill(victim);
        run.kills[victim.index()] += 1;
        run.spawn(victim);
        if rng.below(4) == 0 {
            // Now and then, again while it starts: during exec, the queue's recovery, the
            // bind or connect, the handshake or the resend.
            run.sleep(Duration::from_micros(rng.below(30_000)));
            run.kill(victim);
            run.early_kills[victim.index()] += 1;
            run.spawn(victim);
        }
        run.wait_until_streaming(victim);
    }
    let killing = started.elapsed();

    // Stop sending, then wait until each side has popped all the other pushed, and every
    // message is acknowledged.
    std::fs::write(run.dir.path().join("drain"), b"").unwrap();
    run.wait_for("both streams to drain", |_, s, c| {
        s.drained == 1
            && c.drained == 1
            && s.popped == c.sent
            && c.popped == s.sent
            && s.unacked == 0
            && c.unacked == 0
    });
    std::fs::write(run.dir.path().join("stop"), b"").unwrap();
    let limit = Instant::now() + WAIT_LIMIT;
    for role in [Role::Server, Role::Client] {
        let child = run.children[role.index()].as_mut().unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < limit, "{} does not stop", role.name());
            std::thread::sleep(Duration::from_millis(2));
        };
        run.children[role.index()] = None;
        assert!(
            status.success(),
            "{} failed: {}",
            role.name(),
            describe_exit(status)
        );
    }
    let (server, client) = (
        run.progress(Role::Server).unwrap(),
        run.progress(Role::Client).unwrap(),
    );
    assert_eq!(server.popped, client.sent, "client → server");
    assert_eq!(client.popped, server.sent, "server → client");
    assert_eq!((server.unacked, client.unacked), (0, 0));
    assert_eq!(
        run.kills.iter().sum::<u32>() as usize,
        kills,
        "every planned kill hit a running child"
    );
    run.count(server);
    run.count(client);
    println!(
        "{} messages server → client, {} client → server, every one checked; {} kills \
         mid-stream (server {}, client {}) and {} more while starting (server {}, client {}); \
         {} handshakes, {} messages resent; restarts found {} pushes and {} pops committed but \
         not in the ledger; {:.1?} killing, {:.1?} in all",
        server.sent,
        client.sent,
        kills,
        run.kills[0],
        run.kills[1],
        run.early_kills.iter().sum::<u32>(),
        run.early_kills[0],
        run.early_kills[1],
        run.handshakes,
        run.resent,
        run.ahead[0],
        run.ahead[1],
        killing,
        started.elapsed(),
    );
}

/// The checker is not vacuous: it passes the right message and names a gap, a duplicate and a
/// corrupted byte for every kind of size (empty, shorter than the sequence number, longer).
#[test]
fn checker_sees_gaps_duplicates_and_corruption() {
    let pool = Pool::new();
    let mut scratch = Vec::new();
    let make = |direction: u64, seq: u64| {
        let mut payload = vec![0; message_len(direction, seq) as usize];
        pool.fill(direction, seq, &mut payload);
        (message_tag(seq), payload)
    };
    let mut sizes = [false; 4]; // empty, 1-7 bytes, 8 or more, the maximum
    for direction in [0, 1] {
        for seq in 1..20_000u64 {
            let (tag, payload) = make(direction, seq);
            let class = match payload.len() {
                0 => 0,
                1..=7 => 1,
                len if len == MAX_PAYLOAD as usize => 3,
                _ => 2,
            };
            if sizes[class] && seq > 200 {
                continue;
            }
            sizes[class] = true;
            let check = |expected: u64, tag: u16, payload: &[u8], scratch: &mut Vec<u8>| {
                pool.check(direction, expected, tag, payload, scratch)
                    .map_err(|(code, _)| code)
            };
            assert_eq!(check(seq, tag, &payload, &mut scratch), Ok(()));
            assert_eq!(
                check(seq - 1, tag, &payload, &mut scratch),
                Err(EXIT_GAP),
                "{seq}"
            );
            assert_eq!(
                check(seq + 1, tag, &payload, &mut scratch),
                Err(EXIT_DUPLICATE),
                "{seq}"
            );
            let (_, other) = make(1 - direction, seq);
            if other != payload {
                assert_eq!(
                    check(seq, tag, &other, &mut scratch),
                    Err(EXIT_CORRUPT),
                    "{seq}: the other direction's message"
                );
            }
            for at in [0, payload.len() / 2, payload.len().saturating_sub(1)] {
                if let Some(byte) = payload.get(at) {
                    let mut bad = payload.clone();
                    bad[at] = byte ^ 0x20;
                    let code = check(seq, tag, &bad, &mut scratch).unwrap_err();
                    // A flipped sequence byte reads as another message; any other as corruption.
                    assert!(
                        code == EXIT_CORRUPT
                            || (at < 8 && (code == EXIT_GAP || code == EXIT_DUPLICATE)),
                        "{seq}: byte {at} flipped gave {code}"
                    );
                }
            }
        }
    }
    assert_eq!(sizes, [true; 4], "every size class was checked");
}
