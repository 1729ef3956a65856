//! Crash tests across real processes: two children stream messages of random sizes (1 byte to
//! [`Channel::MAX_PAYLOAD`]) through a channel, each carrying a sequence number and a checksum,
//! while the parent `SIGKILL`s one of them at random moments, reaps it and starts it again. The
//! restarted child re-attaches to its end (taking over the dead process's claims) and carries on;
//! every message must arrive exactly once, in order, intact. A child stops at once, with a
//! failure exit, on the first gap, duplicate or corrupted message.
//!
//! The children are this test binary re-executed with the ignored test [`role_stream_end`] and
//! their parameters in the environment. Each has a deadline (and dies with its parent), so
//! nothing keeps running if the parent fails; the segment lives in a temporary folder removed at
//! the end.
//!
//! # Exactly once across a `kill -9`
//!
//! Pop is the commit, and the rings themselves are the only durable truth: the consumer's byte
//! position (`head`, stored by `pop`) and the producer's (recovered on attach by walking the
//! published records from `head`). A child keeps its own progress in the header's session area,
//! but a kill can always land between a ring operation and any bookkeeping store, so the
//! bookkeeping alone cannot say whether the last operation happened. The ring position can: for
//! each stream (direction) the producer and the consumer each keep two words,
//!
//! - `PENDING = (seq, position)`, stored *before* the ring operation on message `seq`: the
//!   producer's write position before its `alloc`, or the consumer's read position of the record
//!   it is about to pop (as `front` left it, padding skipped);
//! - `DONE = seq + 1`, stored (Release) *after* the operation returned.
//!
//! A restarted child compares its recovered ring position `t` with `PENDING = (s, p)`. Message
//! sizes are a function of the sequence number, so it knows where record `s` lands and ends
//! (record format of `spsc_core::MessageRing`: 8-byte header, payload rounded up to 8 bytes, a
//! padding record instead of wrapping):
//!
//! - producer: `t` is `p` or `p` + padding → `s` was not pushed, resume at `s` (and `DONE` must
//!   not say it was); `t` is the end of record `s` → it was, resume at `s + 1`;
//! - consumer: `t == p` → `s` was not popped, expect `s` again; `t` is the end of record `s` (or
//!   past the padding before `s + 1`) → it was popped, expect `s + 1`;
//! - any other `t` is a failure, as is a `DONE` that claims an operation the ring does not show.
//!
//! So the resume point comes from the ring's own commit, never from the message contents: a ring
//! that redelivered a popped message, lost a pushed one or kept one whose push never returned
//! fails the check at once. Positions come from the handles' `position()`.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shm_channel::{
    Channel, ChannelOptions, Direction, End, Receiver, Segment, SegmentHeader, SegmentOptions,
    Sender,
};
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendError, SendSlot};

/// Ring capacity: small, so that wrap-around, padding and `Full` happen all the time.
const C: usize = 64 * 1024;
type Chan = Channel<C>;
const MASK: u32 = C as u32 - 1;

/// How long a child may live at most, and how long the parent waits for anything.
const CHILD_LIFETIME: Duration = Duration::from_secs(120);

/// The kill tests each use both cores; run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// Messages: everything is a function of (direction, sequence number), so a restarted producer
// regenerates exactly what it would have sent, and the consumer knows what to expect.

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn message_key(direction: Direction, seq: u64) -> u64 {
    splitmix(seq ^ ((direction.index() as u64 + 1) << 56))
}

/// Payload length of message `seq`: mostly small (many messages per second even in a debug
/// build), some medium, some of any size, and now and then exactly 1 byte or exactly the maximum.
fn message_len(direction: Direction, seq: u64) -> u32 {
    let key = message_key(direction, seq);
    let random = key >> 10;
    let max = u64::from(Chan::MAX_PAYLOAD);
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

/// Where a record of `size` bytes lands when the write position is `pos`: at `pos`, or at the
/// start of the next lap when it does not fit before the end of the buffer (padding fills the
/// rest).
fn landing(pos: u32, size: u32) -> u32 {
    let offset = pos & MASK;
    if offset + size > C as u32 {
        pos.wrapping_add(C as u32 - offset)
    } else {
        pos
    }
}

/// Random bytes the message bodies are cut from (8-byte aligned, as payloads are, so both sides
/// checksum whole words).
struct Pool(Vec<u64>);

impl Pool {
    const SLACK: usize = 4096;

    fn new() -> Self {
        let mut state = 0x5EED_u64;
        let words = (0..(Chan::MAX_PAYLOAD as usize + Self::SLACK) / 8)
            .map(|_| {
                state = splitmix(state);
                state
            })
            .collect();
        Self(words)
    }

    /// The body of message `seq` (its payload after the 16-byte prefix), `len` bytes.
    fn body(&self, direction: Direction, seq: u64, len: usize) -> &[u8] {
        let start = (message_key(direction, seq) >> 40) as usize % (Self::SLACK / 8) * 8;
        &bytemuck::cast_slice::<u64, u8>(&self.0)[start..start + len]
    }
}

/// A 64-bit checksum of a message: its direction and number, its length and every byte of its
/// body (as little-endian 64-bit words, then the remaining bytes).
fn checksum(direction: Direction, seq: u64, len: usize, body: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mix = |sum: u64, word: u64| (sum.rotate_left(5) ^ word).wrapping_mul(K);
    let mut sum = message_key(direction, seq) ^ (len as u64).rotate_left(32);
    let tail = match bytemuck::pod_align_to::<u8, u64>(body) {
        // The usual case, and the fast one in a debug build.
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

/// Writes message `seq` into `payload`: its sequence number (8 bytes), the checksum (8 bytes),
/// then the body, all cut to the payload's length (a message shorter than 16 bytes is a prefix
/// of that, identified by its tag, length and bytes).
fn fill(pool: &Pool, direction: Direction, seq: u64, payload: &mut [u8]) {
    let len = payload.len();
    let body = pool.body(direction, seq, len.saturating_sub(16));
    let mut prefix = [0; 16];
    prefix[..8].copy_from_slice(&seq.to_le_bytes());
    prefix[8..].copy_from_slice(&checksum(direction, seq, len, body).to_le_bytes());
    let cut = len.min(16);
    payload[..cut].copy_from_slice(&prefix[..cut]);
    payload[cut..].copy_from_slice(body);
}

/// Checks that the received message is message `expected`, intact.
fn verify(
    pool: &Pool,
    direction: Direction,
    expected: u64,
    tag: u16,
    payload: &[u8],
) -> Result<(), String> {
    if let Some(seq) = payload.get(..8) {
        let seq = u64::from_le_bytes(seq.try_into().unwrap());
        if seq != expected {
            let what = if seq < expected { "DUPLICATE" } else { "GAP" };
            return Err(format!("{what}: expected message {expected}, got {seq}"));
        }
    }
    if tag != message_tag(expected) {
        return Err(format!(
            "expected message {expected} (tag {}), got tag {tag} (GAP or DUPLICATE)",
            message_tag(expected)
        ));
    }
    let len = message_len(direction, expected) as usize;
    if payload.len() != len {
        return Err(format!(
            "message {expected}: length {} instead of {len}",
            payload.len()
        ));
    }
    if len >= 16 {
        let carried = u64::from_le_bytes(payload[8..16].try_into().unwrap());
        if carried != checksum(direction, expected, len, &payload[16..]) {
            return Err(format!(
                "message {expected} ({len} bytes): checksum mismatch"
            ));
        }
    }
    let mut want = vec![0; len];
    fill(pool, direction, expected, &mut want);
    if payload != want {
        return Err(format!("message {expected} ({len} bytes): corrupted bytes"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Progress words in the header's session area, per direction.

const PRODUCER_PENDING: usize = 0;
const PRODUCER_DONE: usize = 1;
const CONSUMER_PENDING: usize = 2;
const CONSUMER_DONE: usize = 3;
/// Set by the parent once it has finished killing: until then no stream delivers its last
/// message, so every kill hits a child in the middle of its stream.
const GATE: usize = 8;
/// Incremented by a child of end A (`STARTS`) or B (`STARTS + 1`) once it has recovered.
const STARTS: usize = 10;
/// Where restarts found the rings, counted for the report: `RESTARTS + side * 5 + case`.
const RESTARTS: usize = 16;
const PRODUCER_SIDE: usize = 0;
const CONSUMER_SIDE: usize = 1;
/// Nothing done yet in this stream.
const FRESH: usize = 0;
/// The last operation was done and recorded.
const CLEAN: usize = 1;
/// The last operation had not happened: that message is pushed (or delivered) again.
const NOT_DONE: usize = 2;
/// The last operation happened, but the kill came before `DONE` recorded it.
const UNRECORDED: usize = 3;
/// Padding was published (or skipped) for a message not yet pushed (or popped).
const PADDING: usize = 4;
const CASES: [&str; 5] = [
    "fresh",
    "clean",
    "not done",
    "done but unrecorded",
    "padding",
];

fn count_restart(header: &SegmentHeader, side: usize, case: usize) {
    word(header, RESTARTS + side * 5 + case).fetch_add(1, Ordering::Relaxed);
}

fn word(header: &SegmentHeader, index: usize) -> &AtomicU64 {
    header.user_word(index).expect("session user word")
}

fn stream_word(header: &SegmentHeader, direction: Direction, which: usize) -> &AtomicU64 {
    word(header, direction.index() * 4 + which)
}

fn pack(seq: u64, pos: u32) -> u64 {
    ((seq + 1) << 32) | u64::from(pos)
}

fn unpack(word: u64) -> Option<(u64, u32)> {
    (word != 0).then(|| ((word >> 32) - 1, word as u32))
}

/// The producer's write position, a wrapping byte count.
fn sender_position(tx: &Sender<C>) -> u32 {
    tx.position()
}

/// The consumer's read position, which `pop` commits to the ring.
fn receiver_position(rx: &Receiver<C>) -> u32 {
    rx.position()
}

/// Where a restarted producer resumes: the next message to push, and which case it found.
/// `pending` and `done` are its words, `tail` is the write position the ring recovered.
fn resume_producer(
    direction: Direction,
    pending: u64,
    done: u64,
    tail: u32,
) -> Result<(u64, usize), String> {
    let Some((seq, pos)) = unpack(pending) else {
        return if (done, tail) == (0, 0) {
            Ok((0, FRESH))
        } else {
            Err(format!(
                "nothing pushed yet, but DONE is {done} and the write position {tail}"
            ))
        };
    };
    let size = record_size(message_len(direction, seq));
    let at = landing(pos, size);
    let after = at.wrapping_add(size);
    if tail == pos || tail == at {
        if done != seq {
            return Err(format!(
                "message {seq} is not in the ring, but DONE says {done} were pushed"
            ));
        }
        Ok((seq, if tail == pos { NOT_DONE } else { PADDING }))
    } else if tail == after {
        match done.checked_sub(seq) {
            Some(1) => Ok((seq + 1, CLEAN)),
            Some(0) => Ok((seq + 1, UNRECORDED)),
            _ => Err(format!(
                "message {seq} is in the ring, but DONE says {done} were pushed"
            )),
        }
    } else {
        Err(format!(
            "write position {tail} is neither before ({pos}) nor after ({after}) message {seq}"
        ))
    }
}

/// Where a restarted consumer of a stream of `total` messages resumes: the next message it must
/// see, and which case it found. `head` is the read position the ring kept.
fn resume_consumer(
    direction: Direction,
    total: u64,
    pending: u64,
    done: u64,
    head: u32,
) -> Result<(u64, usize), String> {
    let Some((seq, pos)) = unpack(pending) else {
        return if (done, head) == (0, 0) {
            Ok((0, FRESH))
        } else {
            Err(format!(
                "nothing popped yet, but DONE is {done} and the read position {head}"
            ))
        };
    };
    let after = pos.wrapping_add(record_size(message_len(direction, seq)));
    // `front` of the next message skipped the padding before it (only after DONE of this one).
    let padded = seq + 1 < total
        && head != after
        && head == landing(after, record_size(message_len(direction, seq + 1)));
    if head == pos {
        if done != seq {
            return Err(format!(
                "message {seq} is delivered again, but DONE says {done} were popped"
            ));
        }
        Ok((seq, NOT_DONE))
    } else if head == after || padded {
        match (done.checked_sub(seq), padded) {
            (Some(1), true) => Ok((seq + 1, PADDING)),
            (Some(1), false) => Ok((seq + 1, CLEAN)),
            (Some(0), false) => Ok((seq + 1, UNRECORDED)),
            _ => Err(format!(
                "message {seq} was popped, but DONE says {done} were popped"
            )),
        }
    } else {
        Err(format!(
            "read position {head} is neither at ({pos}) nor after ({after}) message {seq}"
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The child: one end, producing `send` messages on its outgoing ring and consuming `recv` on its
// incoming one.

/// Exits the child at once with a failure (no unwinding through the ring handles).
fn fail(end: End, direction: Direction, why: &str) -> ! {
    eprintln!("kill test child, {end} on {direction}: {why}");
    std::process::exit(2);
}

fn child_env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} not set: run only as a child role"))
}

struct Outgoing<'h> {
    end: End,
    direction: Direction,
    total: u64,
    next: u64,
    /// Our model of the ring's write position; checked against the real one now and then.
    pos: u32,
    pending: &'h AtomicU64,
    done: &'h AtomicU64,
    gate: &'h AtomicU64,
}

impl<'h> Outgoing<'h> {
    fn recover(end: End, header: &'h SegmentHeader, tx: &Sender<C>, total: u64) -> Self {
        let direction = end.outgoing();
        let pending = stream_word(header, direction, PRODUCER_PENDING);
        let done = stream_word(header, direction, PRODUCER_DONE);
        let tail = sender_position(tx);
        let (next, case) = resume_producer(
            direction,
            pending.load(Ordering::Acquire),
            done.load(Ordering::Acquire),
            tail,
        )
        .unwrap_or_else(|why| fail(end, direction, &why));
        if total > 0 {
            count_restart(header, PRODUCER_SIDE, case);
        }
        Self {
            end,
            direction,
            total,
            next,
            pos: tail,
            pending,
            done,
            gate: word(header, GATE),
        }
    }

    /// Pushes the next message if there is room; `true` if it did.
    fn step(&mut self, pool: &Pool, tx: &mut Sender<C>) -> bool {
        let seq = self.next;
        if seq == self.total || (seq + 1 == self.total && self.gate.load(Ordering::Acquire) == 0) {
            return false;
        }
        let len = message_len(self.direction, seq);
        // Ordered before the ring's stores by their Release.
        self.pending.store(pack(seq, self.pos), Ordering::Relaxed);
        match tx.alloc(len, message_tag(seq)) {
            Ok(mut slot) => {
                fill(pool, self.direction, seq, slot.payload_mut());
                slot.push();
            }
            Err(SendError::Full) => return false,
            Err(error) => fail(self.end, self.direction, &format!("alloc: {error}")),
        }
        self.done.store(seq + 1, Ordering::Release);
        let size = record_size(len);
        self.pos = landing(self.pos, size).wrapping_add(size);
        self.next += 1;
        if seq.is_multiple_of(512) && sender_position(tx) != self.pos {
            fail(
                self.end,
                self.direction,
                &format!(
                    "after message {seq}: write position {} but the record format says {}",
                    sender_position(tx),
                    self.pos
                ),
            );
        }
        true
    }
}

struct Incoming<'h> {
    end: End,
    direction: Direction,
    total: u64,
    expected: u64,
    /// Our model of the ring's read position; checked against the real one now and then.
    pos: u32,
    pending: &'h AtomicU64,
    done: &'h AtomicU64,
    gate: &'h AtomicU64,
}

impl<'h> Incoming<'h> {
    fn recover(end: End, header: &'h SegmentHeader, rx: &Receiver<C>, total: u64) -> Self {
        let direction = end.incoming();
        let pending = stream_word(header, direction, CONSUMER_PENDING);
        let done = stream_word(header, direction, CONSUMER_DONE);
        let head = receiver_position(rx);
        let (expected, case) = resume_consumer(
            direction,
            total,
            pending.load(Ordering::Acquire),
            done.load(Ordering::Acquire),
            head,
        )
        .unwrap_or_else(|why| fail(end, direction, &why));
        if total > 0 {
            count_restart(header, CONSUMER_SIDE, case);
        }
        Self {
            end,
            direction,
            total,
            expected,
            pos: head,
            pending,
            done,
            gate: word(header, GATE),
        }
    }

    /// Checks and pops the next message if there is one; `true` if it did.
    fn step(&mut self, pool: &Pool, rx: &mut Receiver<C>) -> bool {
        let seq = self.expected;
        if seq == self.total || (seq + 1 == self.total && self.gate.load(Ordering::Acquire) == 0) {
            return false;
        }
        let size = match rx.front() {
            Ok(message) => {
                let size = record_size(message.len() as u32);
                // Stored as soon as the message is read, so a kill during the check below also
                // restarts with the message read and not popped. Ordered before the pop's store
                // of the read position by its Release.
                self.pending
                    .store(pack(seq, landing(self.pos, size)), Ordering::Relaxed);
                if let Err(why) =
                    verify(pool, self.direction, seq, message.tag(), message.payload())
                {
                    fail(self.end, self.direction, &why);
                }
                size
            }
            Err(RecvError::Empty) => return false,
            Err(error) => fail(self.end, self.direction, &format!("front: {error}")),
        };
        let at = landing(self.pos, size);
        if let Err(error) = rx.pop() {
            fail(self.end, self.direction, &format!("pop: {error}"));
        }
        self.done.store(seq + 1, Ordering::Release);
        self.pos = at.wrapping_add(size);
        self.expected += 1;
        if seq.is_multiple_of(512) && receiver_position(rx) != self.pos {
            fail(
                self.end,
                self.direction,
                &format!(
                    "after message {seq}: read position {} but the record format says {}",
                    receiver_position(rx),
                    self.pos
                ),
            );
        }
        true
    }
}

/// Child role: opens end `KILL_END` of segment `KILL_NAME` in `KILL_DIR` (taking over the claims
/// of a killed predecessor), then sends messages until `KILL_SEND` are pushed and receives until
/// `KILL_RECV` are popped, resuming where the rings say the previous incarnation stopped.
#[test]
#[ignore = "child role of the kill tests"]
fn role_stream_end() {
    // Die with the parent; the deadline covers a parent that died before this call.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)).unwrap();
    let deadline =
        UNIX_EPOCH + Duration::from_millis(child_env("KILL_DEADLINE_MS").parse().unwrap());
    let dir = PathBuf::from(child_env("KILL_DIR"));
    let name = child_env("KILL_NAME");
    let end = match child_env("KILL_END").as_str() {
        "A" => End::A,
        _ => End::B,
    };
    let send: u64 = child_env("KILL_SEND").parse().unwrap();
    let recv: u64 = child_env("KILL_RECV").parse().unwrap();

    let view = Segment::open(&name, &SegmentOptions::default().dir(&dir)).unwrap();
    let header = view.header().unwrap();
    let endpoint = Chan::open(&name, end, &ChannelOptions::new().dir(&dir))
        .unwrap_or_else(|error| fail(end, end.outgoing(), &format!("open: {error}")));
    let (mut tx, mut rx) = endpoint.split();
    let pool = Pool::new();
    let mut outgoing = Outgoing::recover(end, header, &tx, send);
    let mut incoming = Incoming::recover(end, header, &rx, recv);
    word(header, STARTS + end.index()).fetch_add(1, Ordering::Release);

    let mut rounds = 0u32;
    while outgoing.next < send || incoming.expected < recv {
        let mut progress = false;
        for _ in 0..32 {
            if !outgoing.step(&pool, &mut tx) {
                break;
            }
            progress = true;
        }
        for _ in 0..32 {
            if !incoming.step(&pool, &mut rx) {
                break;
            }
            progress = true;
        }
        rounds = rounds.wrapping_add(1);
        if !progress {
            // Two cores for two children and the parent: never spin without yielding.
            std::thread::yield_now();
        }
        if rounds.is_multiple_of(256) && SystemTime::now() > deadline {
            fail(end, end.outgoing(), "deadline passed");
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
}

/// One test run: the segment, both children, and what to do with them.
struct Run {
    dir: tempfile::TempDir,
    name: &'static str,
    /// Messages A→B and B→A.
    totals: [u64; 2],
    deadline: SystemTime,
    children: [Option<Child>; 2],
    view: Segment,
}

impl Run {
    fn new(name: &'static str, a_to_b: u64, b_to_a: u64) -> Self {
        // The streams move gigabytes: keep the segment in memory when the system has a
        // shared-memory folder.
        let dir = if Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm")
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        let options = ChannelOptions::new().dir(dir.path());
        // Created (and left) by the parent, so a child killed while starting never leaves a
        // half-initialised segment: that is a different test.
        drop(Chan::create(name, End::A, &options).unwrap());
        let view = Segment::open(name, options.segment_options()).unwrap();
        Self {
            dir,
            name,
            totals: [a_to_b, b_to_a],
            deadline: SystemTime::now() + CHILD_LIFETIME,
            children: [None, None],
            view,
        }
    }

    fn header(&self) -> &SegmentHeader {
        self.view.header().unwrap()
    }

    fn spawn(&mut self, end: End) {
        assert!(self.children[end.index()].is_none());
        let deadline_ms = self
            .deadline
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let (send, recv) = (
            self.totals[end.outgoing().index()],
            self.totals[end.incoming().index()],
        );
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "role_stream_end",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KILL_DIR", self.dir.path())
            .env("KILL_NAME", self.name)
            .env("KILL_END", if end == End::A { "A" } else { "B" })
            .env("KILL_SEND", send.to_string())
            .env("KILL_RECV", recv.to_string())
            .env("KILL_DEADLINE_MS", deadline_ms.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.children[end.index()] = Some(child);
    }

    /// Messages `end` has pushed plus popped so far, as its `DONE` words say.
    fn progress(&self, end: End) -> u64 {
        let header = self.header();
        stream_word(header, end.outgoing(), PRODUCER_DONE).load(Ordering::Acquire)
            + stream_word(header, end.incoming(), CONSUMER_DONE).load(Ordering::Acquire)
    }

    /// Everything an end has to push and pop (each end pushes one direction, pops the other).
    fn work(&self) -> u64 {
        self.totals[0] + self.totals[1]
    }

    /// The progress at which an end waits for the gate: all but the last message of each stream.
    fn gated(&self) -> u64 {
        self.totals
            .iter()
            .map(|total| total.saturating_sub(1))
            .sum()
    }

    /// Stops (`SIGSTOP`) or continues (`SIGCONT`) `end`'s child.
    fn signal(&self, end: End, signal: rustix::process::Signal) {
        let child = self.children[end.index()].as_ref().unwrap();
        let pid = rustix::process::Pid::from_child(child);
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Waits until `end`'s child has recovered more than `starts` times in all.
    fn wait_for_start(&mut self, end: End, starts: u64) {
        let limit = Instant::now() + CHILD_LIFETIME;
        while word(self.header(), STARTS + end.index()).load(Ordering::Acquire) <= starts {
            self.check_children();
            assert!(Instant::now() < limit, "{end} does not start");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `SIGKILL`s `end`'s child, reaps it (only then does its pid read as dead, so the next
    /// incarnation may take its claims over) and checks it was still running.
    fn kill(&mut self, end: End) {
        let mut child = self.children[end.index()].take().unwrap();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(sigkill()),
            "{end} ended before it was killed: {status}"
        );
    }

    /// Fails the test at once if a child has exited: before the gate opens no child can finish,
    /// so an exit is a child that found a gap, a duplicate or a corrupted message.
    fn check_children(&mut self) {
        for (child, end) in self.children.iter_mut().zip([End::A, End::B]) {
            if let Some(child) = child {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("{end} exited before the end of its stream: {status}");
                }
            }
        }
    }

    /// Waits until `end` has made progress beyond `mark` (so it has re-attached and streams), or
    /// has reached the gate.
    fn wait_for_progress(&mut self, end: End, mark: u64) {
        let limit = Instant::now() + CHILD_LIFETIME;
        while self.progress(end) <= mark && self.progress(end) < self.gated() {
            self.check_children();
            assert!(Instant::now() < limit, "{end} makes no progress");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Opens the gate and waits for both children to finish their streams, failing at the first
    /// that fails.
    fn finish(&mut self) {
        word(self.header(), GATE).store(1, Ordering::Release);
        let limit = Instant::now() + CHILD_LIFETIME;
        while self.children.iter().any(Option::is_some) {
            for (slot, end) in self.children.iter_mut().zip([End::A, End::B]) {
                if let Some(status) = slot.as_mut().and_then(|child| child.try_wait().unwrap()) {
                    *slot = None;
                    assert!(status.success(), "{end} failed: {status}");
                }
            }
            assert!(Instant::now() < limit, "the streams do not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
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

/// `SIGKILL`'s number, for comparing with an exit status.
fn sigkill() -> i32 {
    rustix::process::Signal::KILL.as_raw()
}

/// Messages per direction: at least a million in an optimised build; a debug build moves fewer
/// in the same time (override with `KILL_MESSAGES`).
fn messages() -> u64 {
    if let Ok(n) = std::env::var("KILL_MESSAGES") {
        return n.parse().unwrap();
    }
    if cfg!(debug_assertions) {
        300_000
    } else {
        1_000_000
    }
}

/// Streams `a_to_b` and `b_to_a` messages between two children while killing one of `victims`
/// `kills` times at random moments, then checks that every message arrived exactly once.
fn kill_test(name: &'static str, a_to_b: u64, b_to_a: u64, victims: &[End], kills: u32) {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let seed = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                ^ u64::from(std::process::id())
        });
    println!("{name}: KILL_SEED={seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut run = Run::new(name, a_to_b, b_to_a);
    run.spawn(End::A);
    run.spawn(End::B);
    let mut started_at = [0, 0];
    let mut early_kills = 0;
    let mut frozen_kills = 0;
    for k in 0..u64::from(kills) {
        let victim = victims[rng.below(victims.len() as u64) as usize];
        // Spread the kills over the stream: the k-th waits for its share of the work, and for
        // progress since the victim's restart (so it re-attached and resumed).
        let share = run.work() * (k + 1) / (u64::from(kills) + 2);
        run.wait_for_progress(victim, share.max(started_at[victim.index()]));
        std::thread::sleep(Duration::from_millis(5 + rng.below(46)));
        // Every other time the peer is frozen around the kill and until the victim has
        // recovered, so the new incarnation finds the rings as the kill left them (a producer
        // otherwise mostly restarts after its consumer has drained everything).
        let peer = victim.peer();
        let frozen = k % 2 == 0;
        let starts = word(run.header(), STARTS + victim.index()).load(Ordering::Acquire);
        if frozen {
            run.signal(peer, rustix::process::Signal::STOP);
            std::thread::sleep(Duration::from_micros(rng.below(2000)));
        }
        run.kill(victim);
        run.spawn(victim);
        if rng.below(3) == 0 {
            // Now and then, kill it again while it starts: during exec, `open`, or the take-over.
            std::thread::sleep(Duration::from_micros(rng.below(3000)));
            run.kill(victim);
            run.spawn(victim);
            early_kills += 1;
        }
        if frozen {
            run.wait_for_start(victim, starts);
            run.signal(peer, rustix::process::Signal::CONT);
            frozen_kills += 1;
        }
        started_at[victim.index()] = run.progress(victim);
    }
    run.finish();
    // Both sides say all was pushed and popped ...
    let header = run.header();
    for direction in [Direction::AToB, Direction::BToA] {
        let total = run.totals[direction.index()];
        assert_eq!(
            stream_word(header, direction, PRODUCER_DONE).load(Ordering::Acquire),
            total
        );
        assert_eq!(
            stream_word(header, direction, CONSUMER_DONE).load(Ordering::Acquire),
            total
        );
    }
    // ... and the rings agree: nothing is left in them, and the children released their ends.
    let options = ChannelOptions::new().dir(run.dir.path());
    for end in [End::A, End::B] {
        let mut endpoint = Chan::open(name, end, &options).unwrap();
        assert!(endpoint.receiver().is_empty(), "{end}: messages left over");
    }
    let restarts = |side: usize| {
        CASES
            .iter()
            .enumerate()
            .map(|(case, what)| {
                let count = word(header, RESTARTS + side * 5 + case).load(Ordering::Relaxed);
                format!("{what} {count}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "{name}: {a_to_b} + {b_to_a} messages, {kills} kills mid-stream ({frozen_kills} with the \
         peer frozen) and {early_kills} while starting, in {:.1?}; restarted producers found: \
         {}; consumers: {}",
        started.elapsed(),
        restarts(PRODUCER_SIDE),
        restarts(CONSUMER_SIDE),
    );
}

#[test]
fn consumer_killed_mid_stream_loses_and_duplicates_nothing() {
    kill_test("kill-consumer", messages(), 0, &[End::B], 5);
}

#[test]
fn producer_killed_mid_stream_loses_and_duplicates_nothing() {
    kill_test("kill-producer", messages(), 0, &[End::A], 5);
}

#[test]
fn either_end_killed_while_streaming_both_ways() {
    let n = messages();
    kill_test("kill-duplex", n, n, &[End::A, End::B], 8);
}

// ---------------------------------------------------------------------------------------------
// The checker itself: it must see a gap, a duplicate, a corrupted byte, and any restart state the
// rings' semantics rule out.

/// A message as a producer writes it.
fn make(pool: &Pool, direction: Direction, seq: u64) -> (u16, Vec<u8>) {
    let mut payload = vec![0; message_len(direction, seq) as usize];
    fill(pool, direction, seq, &mut payload);
    (message_tag(seq), payload)
}

#[test]
fn checker_sees_gaps_duplicates_and_corruption() {
    let pool = Pool::new();
    let direction = Direction::BToA;
    let mut lens = std::collections::BTreeSet::new();
    for seq in 1..5000 {
        let (tag, payload) = make(&pool, direction, seq);
        lens.insert(payload.len());
        assert_eq!(verify(&pool, direction, seq, tag, &payload), Ok(()));
        assert!(
            verify(&pool, direction, seq + 1, tag, &payload).is_err(),
            "{seq}"
        );
        assert!(
            verify(&pool, direction, seq - 1, tag, &payload).is_err(),
            "{seq}"
        );
        // The same message number in the other direction is another message.
        if payload.len() >= 16 || make(&pool, Direction::AToB, seq).1 != payload {
            assert!(verify(&pool, Direction::AToB, seq, tag, &payload).is_err());
        }
        let mut corrupt = payload.clone();
        let at = splitmix(seq) as usize % corrupt.len();
        corrupt[at] ^= 1 << (seq % 8);
        assert!(
            verify(&pool, direction, seq, tag, &corrupt).is_err(),
            "{seq}"
        );
    }
    // Sizes cover both ends of the range.
    assert!(lens.contains(&1) && lens.contains(&(Chan::MAX_PAYLOAD as usize)));
}

#[test]
fn restart_checks_follow_the_rings_commits() {
    let direction = Direction::AToB;
    let seq = 41;
    let size = record_size(message_len(direction, seq));
    // A write position mid-buffer, where the record fits, and one 8 bytes before the end.
    let (mid, edge) = (3 * C as u32 + 64, 4 * C as u32 - 8);
    assert_eq!(landing(mid, size), mid);
    assert_eq!(landing(edge, size), 4 * C as u32);

    // Producer: PENDING (41, p), then alloc (may pad), push, DONE = 42.
    let pending = pack(seq, mid);
    assert_eq!(resume_producer(direction, 0, 0, 0), Ok((0, FRESH)));
    assert!(resume_producer(direction, 0, 0, 64).is_err());
    assert_eq!(
        resume_producer(direction, pending, 41, mid),
        Ok((41, NOT_DONE))
    );
    assert_eq!(
        resume_producer(direction, pending, 41, mid + size),
        Ok((42, UNRECORDED))
    );
    assert_eq!(
        resume_producer(direction, pending, 42, mid + size),
        Ok((42, CLEAN))
    );
    // DONE says pushed, the ring says not: a lost push.
    assert!(resume_producer(direction, pending, 42, mid).is_err());
    // Anything else is a ring that lost or invented records.
    assert!(resume_producer(direction, pending, 41, mid + size + 8).is_err());
    assert!(resume_producer(direction, pending, 40, mid + size).is_err());
    let pending = pack(seq, edge);
    assert_eq!(
        resume_producer(direction, pending, 41, edge),
        Ok((41, NOT_DONE))
    );
    assert_eq!(
        resume_producer(direction, pending, 41, 4 * C as u32),
        Ok((41, PADDING))
    );
    assert_eq!(
        resume_producer(direction, pending, 42, 4 * C as u32 + size),
        Ok((42, CLEAN))
    );

    // Consumer: front, PENDING (41, record position), pop, DONE = 42.
    let total = 1000;
    let pending = pack(seq, mid);
    assert_eq!(resume_consumer(direction, total, 0, 0, 0), Ok((0, FRESH)));
    assert_eq!(
        resume_consumer(direction, total, pending, 41, mid),
        Ok((41, NOT_DONE))
    );
    assert_eq!(
        resume_consumer(direction, total, pending, 41, mid + size),
        Ok((42, UNRECORDED))
    );
    assert_eq!(
        resume_consumer(direction, total, pending, 42, mid + size),
        Ok((42, CLEAN))
    );
    // DONE says popped, yet the ring delivers it again: a duplicate.
    assert!(resume_consumer(direction, total, pending, 42, mid).is_err());
    assert!(resume_consumer(direction, total, pending, 42, mid + size + 8).is_err());
    // Past the padding before message 42 (placed so that it cannot fit before the end).
    let next = record_size(message_len(direction, seq + 1));
    let pos = 5 * C as u32 - size - next + 8;
    let pending = pack(seq, pos);
    assert_eq!(
        resume_consumer(direction, total, pending, 42, 5 * C as u32),
        Ok((42, PADDING))
    );
    assert!(resume_consumer(direction, total, pending, 41, 5 * C as u32).is_err());
}
