//! Crash tests of a whole server deployment across real processes: a server process (a
//! [`Server`] of two groups, all polled by one thread) and two client processes holding three
//! [`Client`]s each, six sessions in all. Every session carries two independent streams of
//! sequence-numbered messages of random sizes (1 byte to the ring's largest payload, each
//! message a function of its stream and number, with a checksum): client → server, which the
//! server's group handler checks, and server → client, which the server pushes into each
//! connection between polls ([`Group::senders`]) and the client checks. Meanwhile the parent
//! `SIGKILL`s the server or a client process at random moments (and now and then again while
//! the new process starts), reaps it and starts it again; the restarted process logs in again
//! under the same names to a server of the same name and carries on where the rings say its
//! predecessor stopped. Every message must arrive exactly once, in order, intact, both ways;
//! a child stops at once, with a failure exit and a message naming the stream, on the first gap,
//! duplicate, corrupted byte or inconsistent ring position. Messages in flight when a process
//! dies (queued, or pushed while the peer was down) stay in the session segments and must be
//! delivered later: at the end the parent asks every producer to stop, waits until every
//! consumer has popped everything its producer pushed, and checks the counts once more from
//! the segments.
//!
//! The children are this test binary re-executed with the ignored test [`role_kill_child`] and
//! their parameters in the environment (`SRV_KILL_*`). Each dies with its parent
//! (`PR_SET_PDEATHSIG`) or at its deadline, and the parent's guard kills them all if it fails.
//!
//! # Exactly once across a `kill -9`
//!
//! Pop is the commit: what a consumer has consumed is what its ring's read position says, and a
//! producer's pushes are what the ring holds. Bookkeeping written after a ring operation can
//! always be cut off by a kill, so a restarted process never takes its resume point from it.
//! Each side keeps a few words of its own in the session segment's header (its session area's
//! user words, which shm-server itself leaves alone), through a second mapping of the segment:
//!
//! - consumer: `PENDING = seq`, stored once message `seq` is at the front and *before* it is
//!   popped (the server's handler runs before its group pops), and `DONE` = messages known
//!   popped (stored after the pop on the client; on the server when the next message is seen
//!   and after every poll). After a restart the first message the ring delivers decides: it
//!   must be `PENDING` (not popped; then `DONE` must not claim it was) or `PENDING + 1`
//!   (popped); anything else is a gap or a duplicate, as is `PENDING` redelivered although
//!   `DONE` says it was popped.
//! - producer: `PENDING = (seq, position)`, the ring's write position stored before the `alloc`
//!   of message `seq`, and `DONE = seq + 1` after its push. A restarted producer reads the
//!   write position the ring recovered on attach, `t`: with the record format (an 8-byte
//!   header, the payload rounded up to 8 bytes, a padding record to the ring's end instead of
//!   wrapping) and the message's size (a function of its number), `t` is either before message
//!   `seq` (`position`, or past the padding `alloc` may have published) and `seq` is pushed
//!   again, or right after it and the stream resumes at `seq + 1`; any other `t` fails, as does
//!   a `DONE` the ring contradicts. Between restarts every push is checked against the same
//!   arithmetic. The server re-derives this for every new connection of a session (an endpoint
//!   opened afresh after a re-login) and checks it against what it pushed itself.
//!
//! The restarts' cases (a kill between the bookkeeping and the ring operation, or between the
//! operation and its `DONE`) are counted in the header and printed.
//!
//! Options in the environment: `SRV_KILL_SEED` (the kill schedule's seed, printed on each run)
//! and `SRV_KILL_KILLS` (kills, default 30).

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::process::{Pid, Signal};
use shm_channel::{monotonic_nanos, Segment, SegmentHeader, SegmentOptions, Sender};
use shm_server::{
    Client, ClientEvent, ClientOptions, ConnId, Decision, Group, Request, Server, ServerConfig,
    ServerEvent,
};
use spsc_core::{MessageReceiver, MessageRing, MessageSender, SendError, SendSlot};

/// Channel capacity: small, so that `Full`, wrap-around and padding happen all the time.
const C: usize = 64 * 1024;
const MAX_PAYLOAD: u32 = MessageRing::<C>::MAX_PAYLOAD;

const SERVER_NAME: &str = "srv";
const GROUPS: usize = 2;
const CLIENT_PROCS: usize = 2;
const PER_PROC: usize = 3;
const SESSIONS: usize = CLIENT_PROCS * PER_PROC;

/// How long a child may live at most, and how long the parent waits for any one thing.
const CHILD_LIFETIME: Duration = Duration::from_secs(150);
const WAIT_LIMIT: Duration = Duration::from_secs(40);
/// How often a child rewrites its progress file and looks for the parent's files.
const REPORT_EVERY: Duration = Duration::from_millis(10);

/// The stream of session `index` in `direction`.
const TO_CLIENT: u64 = 0;
const TO_SERVER: u64 = 1;

fn stream_id(session: usize, direction: u64) -> u64 {
    session as u64 * 2 + direction
}

fn client_name(proc: usize, k: usize) -> String {
    format!("p{proc}c{k}")
}

fn session_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix('p')?;
    let (proc, k) = rest.split_once('c')?;
    let (proc, k): (usize, usize) = (proc.parse().ok()?, k.parse().ok()?);
    (proc < CLIENT_PROCS && k < PER_PROC).then_some(proc * PER_PROC + k)
}

// ---------------------------------------------------------------------------------------------
// Messages: everything is a function of (stream, sequence number).

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn message_key(stream: u64, seq: u64) -> u64 {
    splitmix(seq ^ ((stream + 1) << 48))
}

/// Mostly small (many messages per second even in a debug build), some medium, some of any
/// size, and now and then exactly 1 byte or exactly the largest payload.
fn message_len(stream: u64, seq: u64) -> u32 {
    let key = message_key(stream, seq);
    let random = key >> 10;
    let max = u64::from(MAX_PAYLOAD);
    let len = match key % 1024 {
        0..=3 => max,
        4..=11 => 1,
        12..=23 => 1 + random % max,
        24..=127 => 1 + random % 4096,
        _ => 1 + random % 48,
    };
    len as u32
}

/// The tag carries the low bits of the sequence number, so even a 1-byte message is identified.
fn message_tag(seq: u64) -> u16 {
    seq as u16
}

/// Bytes a message record occupies in the ring (`spsc_core::MessageRing`'s record format).
fn record_size(len: u32) -> u32 {
    8 + ((len + 7) & !7)
}

/// The padding record `alloc` publishes before a `len`-byte message written at `position`: the
/// rest of the ring when the record does not fit before its end.
fn padding(position: u32, len: u32) -> u32 {
    let offset = position & (C as u32 - 1);
    if offset + record_size(len) > C as u32 {
        C as u32 - offset
    } else {
        0
    }
}

/// Random bytes the message bodies are cut from (8-byte aligned, as payloads are).
struct Pool(Vec<u64>);

impl Pool {
    const SLACK: usize = 4096;

    fn new() -> Self {
        let mut state = 0x5EED_u64;
        Self(
            (0..(MAX_PAYLOAD as usize + Self::SLACK) / 8)
                .map(|_| {
                    state = splitmix(state);
                    state
                })
                .collect(),
        )
    }

    fn body(&self, stream: u64, seq: u64, len: usize) -> &[u8] {
        let start = (message_key(stream, seq) >> 40) as usize % (Self::SLACK / 8) * 8;
        &shm_channel::bytemuck::cast_slice::<u64, u8>(&self.0)[start..start + len]
    }
}

/// A checksum of a message: its stream, number, length and every byte of its body.
fn checksum(stream: u64, seq: u64, len: usize, body: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mix = |sum: u64, word: u64| (sum.rotate_left(5) ^ word).wrapping_mul(K);
    let mut sum = message_key(stream, seq) ^ (len as u64).rotate_left(32);
    let tail = match shm_channel::bytemuck::pod_align_to::<u8, u64>(body) {
        ([], words, rest) => {
            for &word in words {
                sum = mix(sum, u64::from_le(word));
            }
            rest
        }
        _ => {
            let chunks = body.chunks_exact(8);
            let rest = chunks.remainder();
            for chunk in chunks {
                sum = mix(sum, u64::from_le_bytes(chunk.try_into().unwrap()));
            }
            rest
        }
    };
    for &byte in tail {
        sum = mix(sum, u64::from(byte));
    }
    splitmix(sum)
}

/// Writes message `seq` into `payload`: its number (8 bytes), the checksum (8 bytes), then the
/// body, all cut to the payload's length.
fn fill(pool: &Pool, stream: u64, seq: u64, payload: &mut [u8]) {
    let len = payload.len();
    let body = pool.body(stream, seq, len.saturating_sub(16));
    let mut prefix = [0; 16];
    prefix[..8].copy_from_slice(&seq.to_le_bytes());
    prefix[8..].copy_from_slice(&checksum(stream, seq, len, body).to_le_bytes());
    let cut = len.min(16);
    payload[..cut].copy_from_slice(&prefix[..cut]);
    payload[cut..].copy_from_slice(body);
}

/// Checks that a received message is message `expected` of `stream`, intact.
fn verify(pool: &Pool, stream: u64, expected: u64, tag: u16, payload: &[u8]) -> Result<(), String> {
    if let Some(seq) = payload.get(..8) {
        let seq = u64::from_le_bytes(seq.try_into().unwrap());
        if seq != expected {
            let what = if seq < expected { "DUPLICATE" } else { "GAP" };
            return Err(format!("{what}: expected message {expected}, got {seq}"));
        }
    }
    if tag != message_tag(expected) {
        return Err(format!(
            "expected message {expected} (tag {}), got tag {tag} (a GAP or a DUPLICATE)",
            message_tag(expected)
        ));
    }
    let len = message_len(stream, expected) as usize;
    if payload.len() != len {
        return Err(format!(
            "message {expected}: {} bytes instead of {len}",
            payload.len()
        ));
    }
    if len >= 16 {
        let carried = u64::from_le_bytes(payload[8..16].try_into().unwrap());
        if carried != checksum(stream, expected, len, &payload[16..]) {
            return Err(format!(
                "message {expected} ({len} bytes): checksum mismatch"
            ));
        }
    }
    let mut want = vec![0; len];
    fill(pool, stream, expected, &mut want);
    if payload != want {
        return Err(format!("message {expected} ({len} bytes): corrupted bytes"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bookkeeping words in each session segment's header (session area user words).

/// The server's words (`SERVER_SIDE`) and the client's (`CLIENT_SIDE`), four each.
const SERVER_SIDE: usize = 0;
const CLIENT_SIDE: usize = 1;
const CONS_PENDING: usize = 0;
const CONS_DONE: usize = 1;
const PROD_PENDING: usize = 2;
const PROD_DONE: usize = 3;
/// The count of messages a side's producer pushed in all, plus one, once it stopped for good.
const FINAL: usize = 8;
/// Restart cases, counted per side: `CASES + side * 4 + case`.
const CASES: usize = 10;
const CASE_NOT_PUSHED: usize = 0;
const CASE_PUSHED_UNRECORDED: usize = 1;
const CASE_NOT_POPPED: usize = 2;
const CASE_POPPED_UNRECORDED: usize = 3;

fn word(header: &SegmentHeader, index: usize) -> &AtomicU64 {
    header.user_word(index).expect("a session user word")
}

fn side_word(header: &SegmentHeader, side: usize, which: usize) -> &AtomicU64 {
    word(header, side * 4 + which)
}

fn count_case(header: &SegmentHeader, side: usize, case: usize) {
    word(header, CASES + side * 4 + case).fetch_add(1, SeqCst);
}

fn pack(seq: u64, position: u32) -> u64 {
    ((seq + 1) << 32) | u64::from(position)
}

fn unpack(word: u64) -> Option<(u64, u32)> {
    (word != 0).then(|| ((word >> 32) - 1, word as u32))
}

/// A second mapping of session `name`'s segment, for the bookkeeping words.
fn session_view(dir: &Path, name: &str) -> Segment {
    Segment::open(name, &SegmentOptions::default().dir(dir.join(SERVER_NAME)))
        .unwrap_or_else(|error| panic!("opening a view of session {name}: {error}"))
}

fn header(view: &Segment) -> &SegmentHeader {
    view.header().expect("a session header")
}

// ---------------------------------------------------------------------------------------------
// One stream's two ends.

/// Set by `fail`'s caller to name the process in messages.
static ROLE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Exits the child at once with a failure (no unwinding through ring handles).
fn fail(why: &str) -> ! {
    eprintln!(
        "shm-server kill test, {} (pid {}): {why}",
        ROLE.get().map_or("?", String::as_str),
        std::process::id()
    );
    std::process::exit(2);
}

/// The consuming end of a stream.
struct Incoming {
    stream: u64,
    side: usize,
    /// The next message, once this process has seen the first one (`None`: resume point not
    /// known yet; the first message the ring delivers tells it).
    expected: Option<u64>,
    /// Popped by this process.
    own: u64,
}

impl Incoming {
    fn new(stream: u64, side: usize) -> Self {
        Self {
            stream,
            side,
            expected: None,
            own: 0,
        }
    }

    /// Checks the message at the front and records it as pending, before the pop. Returns its
    /// number.
    fn at_front(&mut self, header: &SegmentHeader, pool: &Pool, tag: u16, payload: &[u8]) -> u64 {
        let pending = side_word(header, self.side, CONS_PENDING);
        let done = side_word(header, self.side, CONS_DONE);
        let name = |why: String| format!("stream {} (consumer): {why}", self.stream);
        let seq = match self.expected {
            Some(expected) => {
                if let Err(why) = verify(pool, self.stream, expected, tag, payload) {
                    fail(&name(why));
                }
                expected
            }
            None => {
                let (p, d) = (pending.load(SeqCst), done.load(SeqCst));
                match p.checked_sub(1) {
                    None => {
                        if d != 0 {
                            fail(&name(format!("nothing was pending, but DONE is {d}")));
                        }
                        if let Err(why) = verify(pool, self.stream, 0, tag, payload) {
                            fail(&name(format!("the first message is not message 0: {why}")));
                        }
                        0
                    }
                    Some(p) => {
                        if d != p && d != p + 1 {
                            fail(&name(format!("PENDING is {p} but DONE is {d}")));
                        }
                        if verify(pool, self.stream, p, tag, payload).is_ok() {
                            if d == p + 1 {
                                fail(&name(format!(
                                    "DUPLICATE: message {p} was popped (DONE says so) but is \
                                     delivered again after the restart"
                                )));
                            }
                            count_case(header, self.side, CASE_NOT_POPPED);
                            p
                        } else {
                            if let Err(why) = verify(pool, self.stream, p + 1, tag, payload) {
                                fail(&name(format!(
                                    "after a restart with message {p} pending, the ring \
                                     delivers neither {p} nor {}: {why}",
                                    p + 1
                                )));
                            }
                            if d == p {
                                count_case(header, self.side, CASE_POPPED_UNRECORDED);
                            }
                            p + 1
                        }
                    }
                }
            }
        };
        // Every message before `seq` is popped: `front` moved past it.
        done.store(seq, SeqCst);
        pending.store(seq + 1, SeqCst);
        self.expected = Some(seq + 1);
        seq
    }

    /// Records that everything seen was popped.
    fn popped(&mut self, header: &SegmentHeader) {
        if let Some(expected) = self.expected {
            side_word(header, self.side, CONS_DONE).store(expected, SeqCst);
        }
    }

    /// Whether every message the producer pushed in all was popped.
    fn complete(&self, header: &SegmentHeader) -> bool {
        let total = word(header, FINAL + (1 - self.side)).load(SeqCst);
        total != 0 && self.expected == Some(total - 1)
    }
}

/// The producing end of a stream.
struct Outgoing {
    stream: u64,
    side: usize,
    /// The next message to push (`None` until recovered from the ring).
    next: Option<u64>,
    /// The connection the server recovered it for (the server re-derives it for each one).
    conn: Option<ConnId>,
    own: u64,
    finished: bool,
}

impl Outgoing {
    fn new(stream: u64, side: usize) -> Self {
        Self {
            stream,
            side,
            next: None,
            conn: None,
            own: 0,
            finished: false,
        }
    }

    /// Finds where the stream resumes from the write position the ring recovered.
    fn recover(&mut self, header: &SegmentHeader, tx: &Sender<C>) {
        let pending = side_word(header, self.side, PROD_PENDING).load(SeqCst);
        let done = side_word(header, self.side, PROD_DONE).load(SeqCst);
        let tail = tx.position();
        let name = |why: String| format!("stream {} (producer): {why}", self.stream);
        let next = match unpack(pending) {
            None => {
                if (done, tail) != (0, 0) {
                    fail(&name(format!(
                        "nothing pushed yet, but DONE is {done} and the write position {tail}"
                    )));
                }
                0
            }
            Some((seq, position)) => {
                let len = message_len(self.stream, seq);
                let at = position.wrapping_add(padding(position, len));
                let after = at.wrapping_add(record_size(len));
                if tail == position || tail == at {
                    if done != seq {
                        fail(&name(format!(
                            "message {seq} is not in the ring, but DONE says {done} were pushed"
                        )));
                    }
                    if self.next.is_none() {
                        count_case(header, self.side, CASE_NOT_PUSHED);
                    }
                    seq
                } else if tail == after {
                    match done.checked_sub(seq) {
                        Some(1) => {}
                        Some(0) => count_case(header, self.side, CASE_PUSHED_UNRECORDED),
                        _ => fail(&name(format!(
                            "message {seq} is in the ring, but DONE says {done} were pushed"
                        ))),
                    }
                    seq + 1
                } else {
                    fail(&name(format!(
                        "write position {tail} is neither before message {seq} ({position}, or \
                         {at} past the padding) nor after it ({after})"
                    )))
                }
            }
        };
        if let Some(known) = self.next {
            if known != next {
                fail(&name(format!(
                    "this process pushed up to message {known}, but a new endpoint's ring \
                     resumes at {next}"
                )));
            }
        }
        self.next = Some(next);
    }

    /// Pushes the next message if there is room; `true` if it did.
    fn step(&mut self, header: &SegmentHeader, pool: &Pool, tx: &mut Sender<C>) -> bool {
        let seq = self.next.expect("recovered");
        let len = message_len(self.stream, seq);
        let position = tx.position();
        let name = |why: String| format!("stream {} (producer): {why}", self.stream);
        side_word(header, self.side, PROD_PENDING).store(pack(seq, position), SeqCst);
        match tx.alloc(len, message_tag(seq)) {
            Ok(mut slot) => {
                fill(pool, self.stream, seq, slot.payload_mut());
                slot.push();
            }
            Err(SendError::Full) => {
                let tail = tx.position();
                let at = position.wrapping_add(padding(position, len));
                if tail != position && tail != at {
                    fail(&name(format!(
                        "write position {tail} after Full on message {seq}: expected {position} \
                         or {at}"
                    )));
                }
                return false;
            }
            Err(error) => fail(&name(format!("alloc of message {seq}: {error}"))),
        }
        side_word(header, self.side, PROD_DONE).store(seq + 1, SeqCst);
        let after = position
            .wrapping_add(padding(position, len))
            .wrapping_add(record_size(len));
        if tx.position() != after {
            fail(&name(format!(
                "write position {} after pushing message {seq}, the record format says {after}",
                tx.position()
            )));
        }
        self.next = Some(seq + 1);
        self.own += 1;
        true
    }

    /// Stops for good: publishes the stream's total.
    fn finish(&mut self, header: &SegmentHeader) {
        if let (false, Some(next)) = (self.finished, self.next) {
            word(header, FINAL + self.side).store(next + 1, SeqCst);
            self.finished = true;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The children.

/// What a child reports in `<role>.progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    pid: u32,
    /// Streams this incarnation has pushed on and popped from, out of its streams.
    moving: u64,
    streams: u64,
    pushed: u64,
    popped: u64,
    /// 1 once drained and every stream it consumes is complete.
    complete: u64,
    disconnects: u64,
}

impl Progress {
    fn path(dir: &Path, role: &str) -> PathBuf {
        dir.join(format!("{role}.progress"))
    }

    fn read(dir: &Path, role: &str) -> Option<Self> {
        let text = std::fs::read_to_string(Self::path(dir, role)).ok()?;
        let n: Vec<u64> = text
            .split_whitespace()
            .map(|word| word.parse().unwrap())
            .collect();
        let [pid, moving, streams, pushed, popped, complete, disconnects] = n[..] else {
            panic!("malformed progress file: {text:?}");
        };
        Some(Self {
            pid: pid as u32,
            moving,
            streams,
            pushed,
            popped,
            complete,
            disconnects,
        })
    }

    fn write(&self, dir: &Path, role: &str) {
        let path = Self::path(dir, role);
        let tmp = path.with_extension("tmp");
        let text = format!(
            "{} {} {} {} {} {} {}\n",
            self.pid,
            self.moving,
            self.streams,
            self.pushed,
            self.popped,
            self.complete,
            self.disconnects
        );
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
}

fn child_env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} not set: run only as a child role"))
}

/// What a child checks between rounds: the parent's files and its deadline.
struct Housekeeping {
    dir: PathBuf,
    role: String,
    deadline: SystemTime,
    last: Instant,
    drained: bool,
}

impl Housekeeping {
    /// Every [`REPORT_EVERY`]: writes `progress`; returns `true` once the parent said stop.
    fn due(&mut self, progress: impl FnOnce(bool) -> Progress) -> Option<bool> {
        if self.last.elapsed() < REPORT_EVERY {
            return None;
        }
        self.last = Instant::now();
        if SystemTime::now() > self.deadline {
            fail("deadline passed");
        }
        self.drained = self.drained || self.dir.join("drain").exists();
        progress(self.drained).write(&self.dir, &self.role);
        Some(self.dir.join("stop").exists())
    }
}

/// The server's state of one session.
struct ServerSession {
    view: Segment,
    incoming: Incoming,
    outgoing: Outgoing,
    touched: bool,
}

struct ServerSide {
    dir: PathBuf,
    pool: Pool,
    sessions: HashMap<usize, ServerSession>,
}

impl ServerSide {
    fn session(&mut self, name: &str) -> &mut ServerSession {
        let index = session_of(name).unwrap_or_else(|| fail(&format!("unknown client {name}")));
        let dir = &self.dir;
        self.sessions.entry(index).or_insert_with(|| ServerSession {
            view: session_view(dir, name),
            incoming: Incoming::new(stream_id(index, TO_SERVER), SERVER_SIDE),
            outgoing: Outgoing::new(stream_id(index, TO_CLIENT), SERVER_SIDE),
            touched: false,
        })
    }

    /// The group handler: checks the client's stream.
    fn on_request(&mut self, request: &Request<'_>) {
        let name = request.client().as_str();
        self.session(name);
        let session = self.sessions.get_mut(&session_of(name).unwrap()).unwrap();
        session.incoming.at_front(
            header(&session.view),
            &self.pool,
            request.tag(),
            request.payload(),
        );
        session.incoming.own += 1;
        session.touched = true;
    }

    /// After a poll: everything handled was popped.
    fn after_poll(&mut self) {
        for session in self.sessions.values_mut() {
            if session.touched {
                session.touched = false;
                session.incoming.popped(header(&session.view));
            }
        }
    }

    /// Pushes the server's streams into the group's connections.
    fn push(&mut self, group: &mut Group<C>, drained: bool) -> bool {
        let mut moved = false;
        for (id, name, tx) in group.senders() {
            let name = name.as_str().to_owned();
            self.session(&name);
            let index = session_of(&name).unwrap();
            let session = self.sessions.get_mut(&index).unwrap();
            let header = header(&session.view);
            if session.outgoing.conn != Some(id) {
                session.outgoing.recover(header, tx);
                session.outgoing.conn = Some(id);
            }
            if drained {
                session.outgoing.finish(header);
                continue;
            }
            for _ in 0..4 {
                if !session.outgoing.step(header, &self.pool, tx) {
                    break;
                }
                moved = true;
            }
        }
        moved
    }

    fn progress(&self, drained: bool) -> Progress {
        let sessions = self.sessions.values();
        let complete = drained
            && self.sessions.len() == SESSIONS
            && self.sessions.values().all(|session| {
                session.outgoing.finished && session.incoming.complete(header(&session.view))
            });
        Progress {
            pid: std::process::id(),
            moving: sessions
                .filter(|session| session.incoming.own > 0 && session.outgoing.own > 0)
                .count() as u64,
            streams: SESSIONS as u64,
            pushed: self.sessions.values().map(|s| s.outgoing.own).sum(),
            popped: self.sessions.values().map(|s| s.incoming.own).sum(),
            complete: u64::from(complete),
            disconnects: 0,
        }
    }
}

fn run_server(mut house: Housekeeping) {
    let config = ServerConfig::new(SERVER_NAME, &house.dir)
        .unwrap()
        .groups(GROUPS, 16)
        .heartbeat_interval(Duration::from_millis(20))
        // Generous: a killed client is seen at once by its login socket, and a debug build on
        // two busy cores may stall a live one for a while.
        .heartbeat_timeout(Duration::from_secs(5))
        .login_timeout(Duration::from_secs(2));
    let mut server = Server::<C>::new(config, |login| match session_of(login.name().as_str()) {
        Some(index) => Decision::Accept {
            group: index % GROUPS,
        },
        None => Decision::Reject(format!("unknown client {}", login.name())),
    })
    .unwrap_or_else(|error| fail(&format!("starting the server: {error}")));
    let mut side = ServerSide {
        dir: house.dir.clone(),
        pool: Pool::new(),
        sessions: HashMap::new(),
    };
    let mut drained = false;
    // Every control event, for the parent's failure message.
    let mut events = std::fs::File::create(
        house
            .dir
            .join(format!("server-{}.events", std::process::id())),
    )
    .unwrap();
    let started = Instant::now();
    loop {
        let now = monotonic_nanos();
        let mut work = server.poll_control(now);
        while let Some(event) = server.control().next_event() {
            use std::io::Write;
            let _ = writeln!(events, "{:>8.3?} {event:?}", started.elapsed());
            match event {
                ServerEvent::LoggedIn { new_session, .. } if new_session => {
                    fail("a login under the same server name started a new session")
                }
                ServerEvent::Moved { .. } => fail("nothing moves connections here"),
                _ => {}
            }
        }
        for group in 0..GROUPS {
            work += server.poll_group(group, now, |request, _reply| side.on_request(request));
        }
        side.after_poll();
        for group in 0..GROUPS {
            if side.push(server.group(group).unwrap(), drained) {
                work += 1;
            }
        }
        if let Some(stop) = house.due(|now_drained| {
            drained = now_drained;
            side.progress(drained)
        }) {
            if stop {
                return;
            }
        }
        if work == 0 {
            // Two cores for three children and the parent: never spin without yielding.
            std::thread::yield_now();
        }
    }
}

/// A client process's state of one of its sessions.
struct ClientSession {
    client: Client<C>,
    view: Segment,
    incoming: Incoming,
    outgoing: Outgoing,
}

fn run_client(mut house: Housekeeping, proc: usize) {
    let options = ClientOptions::new()
        // Long enough for a server being restarted.
        .login_timeout(Duration::from_secs(20))
        .heartbeat_interval(Duration::from_millis(10))
        .server_timeout(Duration::from_secs(5))
        .retry(Duration::from_millis(2), Duration::from_millis(40));
    let pool = Pool::new();
    let mut sessions: Vec<ClientSession> = (0..PER_PROC)
        .map(|k| {
            let name = client_name(proc, k);
            let index = proc * PER_PROC + k;
            let mut client = Client::<C>::connect(&house.dir, &name, &options)
                .unwrap_or_else(|error| fail(&format!("logging in as {name}: {error}")));
            let view = session_view(&house.dir, &name);
            let mut outgoing = Outgoing::new(stream_id(index, TO_SERVER), CLIENT_SIDE);
            outgoing.recover(header(&view), client.endpoint().sender());
            ClientSession {
                client,
                view,
                incoming: Incoming::new(stream_id(index, TO_CLIENT), CLIENT_SIDE),
                outgoing,
            }
        })
        .collect();
    let mut drained = false;
    let mut disconnects = 0;
    let mut last_error = String::new();
    loop {
        let now = monotonic_nanos();
        let mut work = 0;
        for session in &mut sessions {
            match session.client.poll(now) {
                Ok(Some(ClientEvent::Disconnected { .. })) => disconnects += 1,
                Ok(Some(ClientEvent::Reconnected { new_session, .. })) => {
                    if new_session {
                        fail("a re-login under the same server name started a new session");
                    }
                }
                Ok(None) => {}
                // A refusal while the server still closes the previous login: retried.
                Err(error) => {
                    let error = error.to_string();
                    if error != last_error {
                        eprintln!("{} (pid {}): poll: {error}", house.role, std::process::id());
                        last_error = error;
                    }
                }
            }
            let hdr = header(&session.view);
            for _ in 0..16 {
                let rx = session.client.endpoint().receiver();
                let Ok(message) = rx.front() else { break };
                let (tag, len) = (message.tag(), message.payload().len() as u32);
                session
                    .incoming
                    .at_front(hdr, &pool, tag, message.payload());
                let at = rx.position();
                if let Err(error) = rx.pop() {
                    fail(&format!("pop: {error}"));
                }
                session.incoming.popped(hdr);
                session.incoming.own += 1;
                if rx.position() != at.wrapping_add(record_size(len)) {
                    fail(&format!(
                        "stream {}: read position {} after a {len}-byte message read at {at}",
                        session.incoming.stream,
                        rx.position()
                    ));
                }
                work += 1;
            }
            if drained {
                session.outgoing.finish(hdr);
            } else {
                for _ in 0..4 {
                    let tx = session.client.endpoint().sender();
                    if !session.outgoing.step(hdr, &pool, tx) {
                        break;
                    }
                    work += 1;
                }
            }
        }
        if let Some(stop) = house.due(|now_drained| {
            drained = now_drained;
            let complete = drained
                && sessions.iter().all(|session| {
                    session.outgoing.finished && session.incoming.complete(header(&session.view))
                });
            Progress {
                pid: std::process::id(),
                moving: sessions
                    .iter()
                    .filter(|s| s.incoming.own > 0 && s.outgoing.own > 0)
                    .count() as u64,
                streams: PER_PROC as u64,
                pushed: sessions.iter().map(|s| s.outgoing.own).sum(),
                popped: sessions.iter().map(|s| s.incoming.own).sum(),
                complete: u64::from(complete),
                disconnects,
            }
        }) {
            if stop {
                return;
            }
        }
        if work == 0 {
            std::thread::yield_now();
        }
    }
}

/// Child role: the server (`SRV_KILL_ROLE=server`) or client process `n` (`client<n>`).
#[test]
#[ignore = "child role of the kill test"]
fn role_kill_child() {
    // Die with the parent's test thread; the deadline covers a parent that died before this.
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).unwrap();
    let role = child_env("SRV_KILL_ROLE");
    ROLE.set(role.clone()).unwrap();
    let house = Housekeeping {
        dir: PathBuf::from(child_env("SRV_KILL_DIR")),
        role: role.clone(),
        deadline: UNIX_EPOCH
            + Duration::from_millis(child_env("SRV_KILL_DEADLINE_MS").parse().unwrap()),
        last: Instant::now(),
        drained: false,
    };
    match role.strip_prefix("client") {
        Some(n) => run_client(house, n.parse().unwrap()),
        None => run_server(house),
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

    fn within(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }
}

fn role_name(role: usize) -> String {
    match role {
        0 => "server".into(),
        n => format!("client{}", n - 1),
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => format!("{status}"),
    }
}

/// The children (server, then the client processes), their folder; kills them all when
/// dropped.
struct Run {
    dir: tempfile::TempDir,
    deadline: SystemTime,
    children: Vec<Option<Child>>,
    kills: Vec<u32>,
    early_kills: u32,
    disconnects: u64,
    /// Spawns and kills, by pid, for the failure messages.
    log: Vec<String>,
}

impl Run {
    fn new() -> Self {
        let dir = if Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm")
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        Self {
            dir,
            deadline: SystemTime::now() + CHILD_LIFETIME,
            children: (0..=CLIENT_PROCS).map(|_| None).collect(),
            kills: vec![0; CLIENT_PROCS + 1],
            early_kills: 0,
            disconnects: 0,
            log: Vec::new(),
        }
    }

    fn progress(&self, role: usize) -> Option<Progress> {
        Progress::read(self.dir.path(), &role_name(role))
    }

    fn spawn(&mut self, role: usize) {
        assert!(self.children[role].is_none());
        let deadline_ms = self
            .deadline
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "role_kill_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SRV_KILL_ROLE", role_name(role))
            .env("SRV_KILL_DIR", self.dir.path())
            .env("SRV_KILL_DEADLINE_MS", deadline_ms.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.log
            .push(format!("{} started as pid {}", role_name(role), child.id()));
        self.children[role] = Some(child);
    }

    /// The current server's control events, its last 30.
    fn server_events(&self) -> String {
        let Some(server) = self.children[0].as_ref() else {
            return "(no server)".into();
        };
        let path = self
            .dir
            .path()
            .join(format!("server-{}.events", server.id()));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("\n{}", lines[lines.len().saturating_sub(30)..].join("\n"))
    }

    fn pid(&self, role: usize) -> u32 {
        self.children[role].as_ref().unwrap().id()
    }

    /// `kill -9`s `role`'s child and reaps it (so its sockets and locks are gone before the next
    /// incarnation starts), checking it was still running.
    fn kill(&mut self, role: usize) {
        let mut child = self.children[role].take().unwrap();
        if let Some(last) = self.progress(role).filter(|p| p.pid == child.id()) {
            self.disconnects += last.disconnects;
        }
        let pid = Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, Signal::KILL).unwrap();
        let status = child.wait().unwrap();
        self.log
            .push(format!("{} (pid {}) killed", role_name(role), child.id()));
        assert_eq!(
            status.signal(),
            Some(Signal::KILL.as_raw()),
            "{} ended before it was killed: {}",
            role_name(role),
            describe_exit(status)
        );
    }

    /// Fails at once if a child has exited: until the parent asks, none may.
    fn check_children(&mut self) {
        for role in 0..self.children.len() {
            if let Some(child) = self.children[role].as_mut() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!(
                        "{} (pid {}) exited on its own: {} (its message is above); the last \
                         spawns and kills: {:#?}; the server's \
                         events: {}",
                        role_name(role),
                        child.id(),
                        describe_exit(status),
                        &self.log[self.log.len().saturating_sub(8)..],
                        self.server_events()
                    );
                }
            }
        }
    }

    fn sleep(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            self.check_children();
            std::thread::sleep(Duration::from_millis(2).min(until - Instant::now()));
        }
    }

    fn wait_for(&mut self, why: &str, what: impl Fn(&Self) -> bool) {
        let limit = Instant::now() + WAIT_LIMIT;
        while !what(self) {
            self.check_children();
            assert!(
                Instant::now() < limit,
                "waited {WAIT_LIMIT:?} for {why}: {:?}",
                (0..self.children.len())
                    .map(|role| self.progress(role))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until `role`'s current incarnation has pushed and popped on every one of its
    /// streams: it recovered, logged in and streams both ways everywhere.
    fn wait_until_streaming(&mut self, role: usize) {
        let pid = self.pid(role);
        self.wait_for(
            &format!("{} (pid {pid}) to stream", role_name(role)),
            |run| {
                run.progress(role)
                    .is_some_and(|p| p.pid == pid && p.moving == p.streams)
            },
        );
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Streams both ways on six sessions between a server process and two client processes while
/// killing one of the three with `SIGKILL` at random moments, then drains every stream and
/// checks that every message arrived exactly once, in order, intact.
#[test]
fn kill_9_of_the_server_or_a_client_mid_stream_loses_and_duplicates_nothing() {
    let seed = std::env::var("SRV_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                ^ u64::from(std::process::id())
        });
    let kills: usize = std::env::var("SRV_KILL_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    println!("SRV_KILL_SEED={seed}");
    let started = Instant::now();
    let mut rng = Rng(seed);
    let mut run = Run::new();
    let roles = CLIENT_PROCS + 1;
    for role in 0..roles {
        run.spawn(role);
    }
    for role in 0..roles {
        run.wait_until_streaming(role);
    }
    // A third of the kills on the server, the rest on the clients, in a seeded random order.
    let mut victims: Vec<usize> = (0..kills).map(|k| k % roles).collect();
    for i in (1..victims.len()).rev() {
        victims.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for &victim in &victims {
        run.sleep(Duration::from_millis(rng.within(10, 200)));
        run.kill(victim);
        run.kills[victim] += 1;
        run.spawn(victim);
        if rng.below(4) == 0 {
            // Now and then, again while it starts: during exec, the login, the recovery.
            run.sleep(Duration::from_micros(rng.below(40_000)));
            run.kill(victim);
            run.early_kills += 1;
            run.spawn(victim);
        }
        run.wait_until_streaming(victim);
        if victim == 0 {
            // The clients streamed with the new server too.
            for role in 1..roles {
                let before = run.progress(role).unwrap();
                run.wait_for("the clients to stream with the new server", |run| {
                    run.progress(role)
                        .is_some_and(|p| p.pushed > before.pushed && p.popped > before.popped)
                });
            }
        }
    }
    let killing = started.elapsed();

    // Stop every producer, then wait until every consumer has popped all that was pushed.
    std::fs::write(run.dir.path().join("drain"), b"").unwrap();
    run.wait_for("every stream to drain", |run| {
        (0..roles).all(|role| run.progress(role).is_some_and(|p| p.complete == 1))
    });
    std::fs::write(run.dir.path().join("stop"), b"").unwrap();
    let limit = Instant::now() + WAIT_LIMIT;
    for role in 0..roles {
        let child = run.children[role].as_mut().unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < limit, "{} does not stop", role_name(role));
            std::thread::sleep(Duration::from_millis(2));
        };
        run.children[role] = None;
        assert!(
            status.success(),
            "{} failed: {}",
            role_name(role),
            describe_exit(status)
        );
    }
    for role in 1..roles {
        run.disconnects += run.progress(role).unwrap().disconnects;
    }

    // The segments' own account: each consumer popped exactly what its producer pushed.
    let mut totals = [0u64; 2];
    let mut cases = [[0u64; 4]; 2];
    for proc in 0..CLIENT_PROCS {
        for k in 0..PER_PROC {
            let name = client_name(proc, k);
            let view = session_view(run.dir.path(), &name);
            let header = header(&view);
            let load = |index: usize| word(header, index).load(SeqCst);
            let to_client = load(FINAL + SERVER_SIDE);
            let to_server = load(FINAL + CLIENT_SIDE);
            assert!(
                to_client > 1 && to_server > 1,
                "{name}: streams never moved"
            );
            assert_eq!(
                load(CLIENT_SIDE * 4 + CONS_DONE),
                to_client - 1,
                "{name}: server → client"
            );
            assert_eq!(
                load(SERVER_SIDE * 4 + CONS_DONE),
                to_server - 1,
                "{name}: client → server"
            );
            totals[0] += to_client - 1;
            totals[1] += to_server - 1;
            for (side, cases) in cases.iter_mut().enumerate() {
                for (case, count) in cases.iter_mut().enumerate() {
                    *count += load(CASES + side * 4 + case);
                }
            }
        }
    }
    assert_eq!(
        run.kills.iter().sum::<u32>() as usize,
        kills,
        "every planned kill hit a running child"
    );
    println!(
        "{} messages server → client, {} client → server on {SESSIONS} sessions, every one \
         checked; {kills} kills mid-stream (server {}, clients {:?}) and {} more while \
         starting; {} client disconnects seen; restarts found (server, client): pushes not done \
         {} / {}, pushes done but unrecorded {} / {}, pops not done {} / {}, pops done but \
         unrecorded {} / {}; {:.1?} killing, {:.1?} in all",
        totals[0],
        totals[1],
        run.kills[0],
        &run.kills[1..],
        run.early_kills,
        run.disconnects,
        cases[0][CASE_NOT_PUSHED],
        cases[1][CASE_NOT_PUSHED],
        cases[0][CASE_PUSHED_UNRECORDED],
        cases[1][CASE_PUSHED_UNRECORDED],
        cases[0][CASE_NOT_POPPED],
        cases[1][CASE_NOT_POPPED],
        cases[0][CASE_POPPED_UNRECORDED],
        cases[1][CASE_POPPED_UNRECORDED],
        killing,
        started.elapsed()
    );
}
