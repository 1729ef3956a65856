//! Crash tests across real processes: two children stream messages of random sizes (1 byte to
//! [`Channel::MAX_PAYLOAD`]) through a channel, each carrying a sequence number and a checksum,
//! while the parent `SIGKILL`s one of them at random moments, reaps it and starts it again. The
//! restarted child re-attaches to its end (taking over the dead process's claims) and carries on;
//! every message must arrive exactly once, in order, intact. A child stops at once, with a
//! failure exit, on the first gap, duplicate or corrupted message. Each scenario runs on a
//! one-lane channel and on a sixteen-lane one (`Channel<C, 16>`), where a take-over must also
//! find the lane the round-robin stands at.
//!
//! The children are this test binary re-executed with the ignored test [`role_stream_end`] and
//! their parameters in the environment. Each has a deadline (and dies with its parent), so
//! nothing keeps running if the parent fails; the segment lives in a temporary folder removed at
//! the end.
//!
//! # Exactly once across a `kill -9`
//!
//! Pop is the commit, and the rings themselves are the only durable truth: the consumer's byte
//! positions (`head`, stored by `pop`) and the producer's (recovered on attach by walking the
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
//! A restarted child compares its recovered ring position `t` with `PENDING = (s, p)`. It needs
//! to know where record `s` lands and ends (record format of `spsc_core::MessageRing`: 8-byte
//! header, payload rounded up to 8 bytes, a padding record to the end of the lane instead of
//! wrapping), and with lanes the position the handles report is the *sum* of the lanes'
//! positions, which does not tell where in its lane a record starts, so not whether it needs
//! padding. The child does not need the ring to tell it: message sizes are a function of the
//! sequence number and message `k` goes to lane `k % L`, so each lane's position before message
//! `s` follows from the record format alone. A restarted child replays it from message 0
//! ([`Lanes::replay`]), checks that `p` is where that model puts message `s`, and then:
//!
//! - producer: `t` is `p` or `p` + padding → `s` was not pushed, resume at `s` (and `DONE` must
//!   not say it was); `t` is the end of record `s` → it was, resume at `s + 1`;
//! - consumer: `t == p` → `s` was not popped, expect `s` again; `t` is the end of record `s` (or
//!   past the padding before `s + 1`, in its own lane) → it was popped, expect `s + 1`;
//! - any other `t` is a failure, as is a `DONE` that claims an operation the ring does not show.
//!
//! So the resume point comes from the ring's own commit, never from the message contents: a ring
//! that redelivered a popped message, lost a pushed one or kept one whose push never returned
//! fails the check at once. Between restarts each child keeps the model up to date and checks
//! the ring's position against it after every operation. Positions come from the handles'
//! `position()`.

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

/// Ring capacity: small, so that wrap-around, padding and `Full` happen all the time (with
/// sixteen lanes, in lanes of 4 KiB).
const C: usize = 64 * 1024;
type Chan<const L: usize> = Channel<C, L>;

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

/// Payload length of message `seq` on an `L`-lane channel: mostly small (many messages per
/// second even in a debug build), some medium, some of any size, and now and then exactly 1
/// byte or exactly the maximum, which a lane sets.
fn message_len<const L: usize>(direction: Direction, seq: u64) -> u32 {
    let key = message_key(direction, seq);
    let random = key >> 10;
    let max = u64::from(Chan::<L>::MAX_PAYLOAD);
    // Up to 4 KiB, or half the maximum when lanes are small, so "any size" stays a class of its
    // own (one lane: 4 KiB of 32 KiB; sixteen: 1 KiB of 2 KiB).
    let medium = (max / 2).min(4096);
    let len = match key % 1024 {
        0..=3 => max,
        4..=11 => 1,
        12..=23 => 1 + random % max,
        24..=127 => 1 + random % medium,
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

/// A model of one stream's ring of `L` lanes: each lane's position after the stream's first
/// `next` messages, from the record format alone. Message `k` goes to lane `k % L`, and a
/// record that does not fit before the end of its lane follows a padding record to that end;
/// since every size is a function of the message number, so is every lane's position, however
/// the messages were timed, interrupted or retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lanes<const L: usize> {
    direction: Direction,
    /// Wrapping byte positions, as the ring counts them.
    positions: [u32; L],
    /// The next message, whose lane is `next % L`.
    next: u64,
}

impl<const L: usize> Lanes<L> {
    /// Bytes in one lane.
    const LANE: u32 = (C / L) as u32;

    fn new(direction: Direction) -> Self {
        Self {
            direction,
            positions: [0; L],
            next: 0,
        }
    }

    /// The lanes after the stream's first `messages` messages, replayed from the ring's
    /// creation: what a restarted child knows without trusting anything its predecessor wrote.
    fn replay(direction: Direction, messages: u64) -> Self {
        let mut lanes = Self::new(direction);
        while lanes.next < messages {
            lanes.advance();
        }
        lanes
    }

    /// The summed position, as the handles' `position()` reports it.
    fn position(&self) -> u32 {
        self.positions
            .iter()
            .fold(0, |sum, &position| sum.wrapping_add(position))
    }

    fn lane(&self) -> usize {
        (self.next % L as u64) as usize
    }

    /// The record of message `next`: the padding its lane needs first (the rest of the lane
    /// when the record does not fit before the lane's end, else 0) and its own size.
    fn next_record(&self) -> (u32, u32) {
        let size = record_size(message_len::<L>(self.direction, self.next));
        let offset = self.positions[self.lane()] & (Self::LANE - 1);
        let padding = if offset + size > Self::LANE {
            Self::LANE - offset
        } else {
            0
        };
        (padding, size)
    }

    /// Accounts for message `next`, its padding included.
    fn advance(&mut self) {
        let (padding, size) = self.next_record();
        let lane = self.lane();
        self.positions[lane] = self.positions[lane].wrapping_add(padding + size);
        self.next += 1;
    }
}

/// Random bytes the message bodies are cut from (8-byte aligned, as payloads are, so both sides
/// checksum whole words).
struct Pool(Vec<u64>);

impl Pool {
    const SLACK: usize = 4096;

    /// Enough for the largest message of any lane count: one lane's.
    fn new() -> Self {
        let mut state = 0x5EED_u64;
        let words = (0..(Chan::<1>::MAX_PAYLOAD as usize + Self::SLACK) / 8)
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

/// Checks that the received message is message `expected` of an `L`-lane stream, intact.
fn verify<const L: usize>(
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
    let len = message_len::<L>(direction, expected) as usize;
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

/// Where a restarted producer resumes: the next message to push, and which case it found.
/// `pending` and `done` are its words, `tail` is the write position the ring recovered, and
/// `lanes_before(s)` models the lanes before message `s` ([`Lanes::replay`], or crafted lanes in
/// the unit checks).
fn resume_producer<const L: usize>(
    pending: u64,
    done: u64,
    tail: u32,
    lanes_before: impl FnOnce(u64) -> Lanes<L>,
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
    let lanes = lanes_before(seq);
    check_pending(&lanes, seq, pos, 0)?;
    let (padding, size) = lanes.next_record();
    // With lanes the padding comes from the record's own lane: the summed `pos` cannot say.
    let at = pos.wrapping_add(padding);
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
            "write position {tail} is neither before ({pos}, padding {padding}) nor after \
             ({after}) message {seq}"
        ))
    }
}

/// Where a restarted consumer of a stream of `total` messages resumes: the next message it must
/// see, and which case it found. `head` is the read position the ring kept; `lanes_before` as
/// for [`resume_producer`].
fn resume_consumer<const L: usize>(
    total: u64,
    pending: u64,
    done: u64,
    head: u32,
    lanes_before: impl FnOnce(u64) -> Lanes<L>,
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
    let mut lanes = lanes_before(seq);
    // PENDING holds the record's position as `front` left it: past its lane's padding.
    let (padding, _) = lanes.next_record();
    check_pending(&lanes, seq, pos, padding)?;
    lanes.advance();
    let after = lanes.position();
    // `front` of the next message skipped the padding before it, in the next message's lane
    // (only after DONE of this one).
    let padded = seq + 1 < total && {
        let (next_padding, _) = lanes.next_record();
        next_padding != 0 && head == after.wrapping_add(next_padding)
    };
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

/// Checks that `lanes` models the ring before message `seq`, where PENDING put the message at
/// `pos` (`skipped` bytes of padding past the lanes' position). PENDING's position came from the
/// dead child's model, so a disagreement is a bug of the model or of the bookkeeping; the ring
/// is judged by the checks that follow.
fn check_pending<const L: usize>(
    lanes: &Lanes<L>,
    seq: u64,
    pos: u32,
    skipped: u32,
) -> Result<(), String> {
    let modelled = lanes.position().wrapping_add(skipped);
    if lanes.next != seq || modelled != pos {
        return Err(format!(
            "PENDING puts message {seq} at {pos}, the model (at message {}) at {modelled}",
            lanes.next
        ));
    }
    Ok(())
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

/// Fails the child: the ring's position (`real`) is not where the model says (`modelled`).
fn off_model<const L: usize>(
    end: End,
    lanes: &Lanes<L>,
    when: &str,
    real: u32,
    modelled: u32,
) -> ! {
    let why = format!(
        "{when}: {real}, but the record format says {modelled} (modelled lanes {:?})",
        lanes.positions
    );
    fail(end, lanes.direction, &why)
}

struct Outgoing<'h, const L: usize> {
    end: End,
    direction: Direction,
    total: u64,
    /// Our model of the ring before the next message (`lanes.next`); the ring's write position
    /// is checked against it after every operation.
    lanes: Lanes<L>,
    pending: &'h AtomicU64,
    done: &'h AtomicU64,
    gate: &'h AtomicU64,
}

impl<'h, const L: usize> Outgoing<'h, L> {
    fn recover(end: End, header: &'h SegmentHeader, tx: &Sender<C, L>, total: u64) -> Self {
        let direction = end.outgoing();
        let pending = stream_word(header, direction, PRODUCER_PENDING);
        let done = stream_word(header, direction, PRODUCER_DONE);
        let (next, case) = resume_producer(
            pending.load(Ordering::Acquire),
            done.load(Ordering::Acquire),
            tx.position(),
            |seq| Lanes::<L>::replay(direction, seq),
        )
        .unwrap_or_else(|why| fail(end, direction, &why));
        if total > 0 {
            count_restart(header, PRODUCER_SIDE, case);
        }
        Self {
            end,
            direction,
            total,
            lanes: Lanes::replay(direction, next),
            pending,
            done,
            gate: word(header, GATE),
        }
    }

    fn next(&self) -> u64 {
        self.lanes.next
    }

    /// Pushes the next message if there is room; `true` if it did.
    fn step(&mut self, pool: &Pool, tx: &mut Sender<C, L>) -> bool {
        let seq = self.next();
        if seq == self.total || (seq + 1 == self.total && self.gate.load(Ordering::Acquire) == 0) {
            return false;
        }
        let len = message_len::<L>(self.direction, seq);
        // Ordered before the ring's stores by their Release.
        self.pending
            .store(pack(seq, self.lanes.position()), Ordering::Relaxed);
        match tx.alloc(len, message_tag(seq)) {
            Ok(mut slot) => {
                fill(pool, self.direction, seq, slot.payload_mut());
                slot.push();
            }
            Err(SendError::Full) => {
                // `alloc` may have padded the rest of the lane before finding no room.
                let (padding, _) = self.lanes.next_record();
                let before = self.lanes.position();
                let tail = tx.position();
                if tail != before && tail != before.wrapping_add(padding) {
                    let when = format!("write position after Full on message {seq}");
                    off_model(self.end, &self.lanes, &when, tail, before);
                }
                return false;
            }
            Err(error) => fail(self.end, self.direction, &format!("alloc: {error}")),
        }
        self.done.store(seq + 1, Ordering::Release);
        self.lanes.advance();
        if tx.position() != self.lanes.position() {
            let when = format!("write position after pushing message {seq}");
            off_model(
                self.end,
                &self.lanes,
                &when,
                tx.position(),
                self.lanes.position(),
            );
        }
        true
    }
}

struct Incoming<'h, const L: usize> {
    end: End,
    direction: Direction,
    total: u64,
    /// Our model of the ring before the next message we expect (`lanes.next`); the ring's read
    /// position is checked against it after every operation.
    lanes: Lanes<L>,
    pending: &'h AtomicU64,
    done: &'h AtomicU64,
    gate: &'h AtomicU64,
}

impl<'h, const L: usize> Incoming<'h, L> {
    fn recover(end: End, header: &'h SegmentHeader, rx: &Receiver<C, L>, total: u64) -> Self {
        let direction = end.incoming();
        let pending = stream_word(header, direction, CONSUMER_PENDING);
        let done = stream_word(header, direction, CONSUMER_DONE);
        let (expected, case) = resume_consumer(
            total,
            pending.load(Ordering::Acquire),
            done.load(Ordering::Acquire),
            rx.position(),
            |seq| Lanes::<L>::replay(direction, seq),
        )
        .unwrap_or_else(|why| fail(end, direction, &why));
        if total > 0 {
            count_restart(header, CONSUMER_SIDE, case);
        }
        Self {
            end,
            direction,
            total,
            lanes: Lanes::replay(direction, expected),
            pending,
            done,
            gate: word(header, GATE),
        }
    }

    fn expected(&self) -> u64 {
        self.lanes.next
    }

    /// Checks and pops the next message if there is one; `true` if it did.
    fn step(&mut self, pool: &Pool, rx: &mut Receiver<C, L>) -> bool {
        let seq = self.expected();
        if seq == self.total || (seq + 1 == self.total && self.gate.load(Ordering::Acquire) == 0) {
            return false;
        }
        let (padding, _) = self.lanes.next_record();
        let before = self.lanes.position();
        let at = before.wrapping_add(padding);
        match rx.front() {
            Ok(message) => {
                // Stored as soon as the message is read, so a kill during the checks below also
                // restarts with the message read and not popped. Ordered before the pop's store
                // of the read position by its Release.
                self.pending.store(pack(seq, at), Ordering::Relaxed);
                if let Err(why) =
                    verify::<L>(pool, self.direction, seq, message.tag(), message.payload())
                {
                    fail(self.end, self.direction, &why);
                }
            }
            Err(RecvError::Empty) => {
                // `front` may have skipped the padding before a message not yet pushed.
                let head = rx.position();
                if head != before && head != at {
                    let when = format!("read position while awaiting message {seq}");
                    off_model(self.end, &self.lanes, &when, head, before);
                }
                return false;
            }
            Err(error) => fail(self.end, self.direction, &format!("front: {error}")),
        }
        if rx.position() != at {
            let when = format!("read position of message {seq}");
            off_model(self.end, &self.lanes, &when, rx.position(), at);
        }
        if let Err(error) = rx.pop() {
            fail(self.end, self.direction, &format!("pop: {error}"));
        }
        self.done.store(seq + 1, Ordering::Release);
        self.lanes.advance();
        if rx.position() != self.lanes.position() {
            let when = format!("read position after popping message {seq}");
            off_model(
                self.end,
                &self.lanes,
                &when,
                rx.position(),
                self.lanes.position(),
            );
        }
        true
    }
}

/// Child role: opens end `KILL_END` of segment `KILL_NAME` in `KILL_DIR`, a channel of
/// `KILL_LANES` lanes (taking over the claims of a killed predecessor), then sends messages until
/// `KILL_SEND` are pushed and receives until `KILL_RECV` are popped, resuming where the rings say
/// the previous incarnation stopped.
#[test]
#[ignore = "child role of the kill tests"]
fn role_stream_end() {
    // Die with the parent; the deadline covers a parent that died before this call.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)).unwrap();
    match child_env("KILL_LANES").as_str() {
        "1" => stream_end::<1>(),
        "16" => stream_end::<16>(),
        other => panic!("KILL_LANES={other}: no kill test uses that many lanes"),
    }
}

fn stream_end<const L: usize>() {
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
    let endpoint = Chan::<L>::open(&name, end, &ChannelOptions::new().dir(&dir))
        .unwrap_or_else(|error| fail(end, end.outgoing(), &format!("open: {error}")));
    let (mut tx, mut rx) = endpoint.split();
    let pool = Pool::new();
    let mut outgoing = Outgoing::recover(end, header, &tx, send);
    let mut incoming = Incoming::recover(end, header, &rx, recv);
    word(header, STARTS + end.index()).fetch_add(1, Ordering::Release);

    let mut rounds = 0u32;
    while outgoing.next() < send || incoming.expected() < recv {
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
    /// The channel's lane count, passed on to the children.
    lanes: usize,
    /// Messages A→B and B→A.
    totals: [u64; 2],
    deadline: SystemTime,
    children: [Option<Child>; 2],
    view: Segment,
}

impl Run {
    fn new<const L: usize>(name: &'static str, a_to_b: u64, b_to_a: u64) -> Self {
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
        drop(Chan::<L>::create(name, End::A, &options).unwrap());
        let view = Segment::open(name, options.segment_options()).unwrap();
        Self {
            dir,
            name,
            lanes: L,
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
            .env("KILL_LANES", self.lanes.to_string())
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

/// Streams `a_to_b` and `b_to_a` messages between two children over an `L`-lane channel while
/// killing one of `victims` `kills` times at random moments, then checks that every message
/// arrived exactly once.
fn kill_test<const L: usize>(
    name: &'static str,
    a_to_b: u64,
    b_to_a: u64,
    victims: &[End],
    kills: u32,
) {
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
    let mut run = Run::new::<L>(name, a_to_b, b_to_a);
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
        let mut endpoint = Chan::<L>::open(name, end, &options).unwrap();
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
        "{name}: {a_to_b} + {b_to_a} messages on {L} lane{}, {kills} kills mid-stream \
         ({frozen_kills} with the peer frozen) and {early_kills} while starting, in {:.1?}; \
         restarted producers found: {}; consumers: {}",
        if L == 1 { "" } else { "s" },
        started.elapsed(),
        restarts(PRODUCER_SIDE),
        restarts(CONSUMER_SIDE),
    );
}

#[test]
fn consumer_killed_mid_stream_loses_and_duplicates_nothing() {
    kill_test::<1>("kill-consumer", messages(), 0, &[End::B], 5);
}

#[test]
fn producer_killed_mid_stream_loses_and_duplicates_nothing() {
    kill_test::<1>("kill-producer", messages(), 0, &[End::A], 5);
}

#[test]
fn either_end_killed_while_streaming_both_ways() {
    let n = messages();
    kill_test::<1>("kill-duplex", n, n, &[End::A, End::B], 8);
}

#[test]
fn consumer_killed_on_16_lanes_loses_and_duplicates_nothing() {
    kill_test::<16>("kill-consumer-16", messages(), 0, &[End::B], 5);
}

#[test]
fn producer_killed_on_16_lanes_loses_and_duplicates_nothing() {
    kill_test::<16>("kill-producer-16", messages(), 0, &[End::A], 5);
}

#[test]
fn either_end_killed_on_16_lanes_while_streaming_both_ways() {
    let n = messages();
    kill_test::<16>("kill-duplex-16", n, n, &[End::A, End::B], 8);
}

// ---------------------------------------------------------------------------------------------
// The checker itself: it must see a gap, a duplicate, a corrupted byte, and any restart state the
// rings' semantics rule out; and its model of the lanes must be the ring's.

/// A message of an `L`-lane stream as a producer writes it.
fn make<const L: usize>(pool: &Pool, direction: Direction, seq: u64) -> (u16, Vec<u8>) {
    let mut payload = vec![0; message_len::<L>(direction, seq) as usize];
    fill(pool, direction, seq, &mut payload);
    (message_tag(seq), payload)
}

#[test]
fn checker_sees_gaps_duplicates_and_corruption() {
    checker_sees_gaps_duplicates_and_corruption_on::<1>();
    checker_sees_gaps_duplicates_and_corruption_on::<16>();
}

fn checker_sees_gaps_duplicates_and_corruption_on<const L: usize>() {
    let pool = Pool::new();
    let direction = Direction::BToA;
    let mut lens = std::collections::BTreeSet::new();
    for seq in 1..5000 {
        let (tag, payload) = make::<L>(&pool, direction, seq);
        lens.insert(payload.len());
        assert_eq!(verify::<L>(&pool, direction, seq, tag, &payload), Ok(()));
        assert!(
            verify::<L>(&pool, direction, seq + 1, tag, &payload).is_err(),
            "{seq}"
        );
        assert!(
            verify::<L>(&pool, direction, seq - 1, tag, &payload).is_err(),
            "{seq}"
        );
        // The same message number in the other direction is another message.
        if payload.len() >= 16 || make::<L>(&pool, Direction::AToB, seq).1 != payload {
            assert!(verify::<L>(&pool, Direction::AToB, seq, tag, &payload).is_err());
        }
        let mut corrupt = payload.clone();
        let at = splitmix(seq) as usize % corrupt.len();
        corrupt[at] ^= 1 << (seq % 8);
        assert!(
            verify::<L>(&pool, direction, seq, tag, &corrupt).is_err(),
            "{seq}"
        );
    }
    // Sizes cover both ends of the range, which a lane sets.
    let max = Chan::<L>::MAX_PAYLOAD as usize;
    assert_eq!(lens.first(), Some(&1), "{L} lanes");
    assert_eq!(lens.last(), Some(&max), "{L} lanes");
}

/// Lanes before message `seq` with its lane at position `at`, the others at assorted laps and
/// offsets, and (with several lanes) the summed position `sum_offset` bytes into a lap of a
/// lane: so the sum says nothing true about where in its lane the record starts.
fn crafted<const L: usize>(direction: Direction, seq: u64, at: u32, sum_offset: u32) -> Lanes<L> {
    let lane_size = Lanes::<L>::LANE;
    let lane = (seq % L as u64) as usize;
    let mut lanes = Lanes {
        direction,
        positions: std::array::from_fn(|l| {
            let l = l as u32;
            (l * 7 + 3) * lane_size + l * 200 % lane_size
        }),
        next: seq,
    };
    lanes.positions[lane] = at;
    if L > 1 {
        let other = (lane + L - 1) % L;
        let shift = sum_offset.wrapping_sub(lanes.position()) & (lane_size - 1);
        lanes.positions[other] += shift;
    }
    lanes
}

#[test]
fn restart_checks_follow_the_rings_commits() {
    restart_checks_follow_the_rings_commits_on::<1>();
    restart_checks_follow_the_rings_commits_on::<16>();
}

fn restart_checks_follow_the_rings_commits_on<const L: usize>() {
    let direction = Direction::AToB;
    let seq = 41;
    let lane_size = Lanes::<L>::LANE;
    let size = record_size(message_len::<L>(direction, seq));
    // Message 41's lane mid-lap, where the record fits, or 8 bytes before its end. With lanes
    // the sums say the opposite: a landing worked out from them would pad at `mid` only.
    let mid = crafted::<L>(direction, seq, 3 * lane_size + 64, lane_size - 8);
    let edge = crafted::<L>(direction, seq, 4 * lane_size - 8, 64);
    assert_eq!(mid.next_record(), (0, size));
    assert_eq!(edge.next_record(), (8, size));
    let (at_mid, at_edge) = (mid.position(), edge.position());
    if L > 1 {
        assert_eq!(at_mid % lane_size, lane_size - 8);
        assert_eq!(at_edge % lane_size, 64);
    }
    // What a restarted child replays; here, the crafted lanes.
    let model = |lanes: Lanes<L>| move |_: u64| lanes;

    // Producer: PENDING (41, p), then alloc (may pad), push, DONE = 42.
    let pending = pack(seq, at_mid);
    assert_eq!(resume_producer(0, 0, 0, model(mid)), Ok((0, FRESH)));
    assert!(resume_producer(0, 0, 64, model(mid)).is_err());
    assert_eq!(
        resume_producer(pending, 41, at_mid, model(mid)),
        Ok((41, NOT_DONE))
    );
    assert_eq!(
        resume_producer(pending, 41, at_mid + size, model(mid)),
        Ok((42, UNRECORDED))
    );
    assert_eq!(
        resume_producer(pending, 42, at_mid + size, model(mid)),
        Ok((42, CLEAN))
    );
    // DONE says pushed, the ring says not: a lost push.
    assert!(resume_producer(pending, 42, at_mid, model(mid)).is_err());
    // Anything else is a ring that lost or invented records (here padding the lane needs not).
    assert!(resume_producer(pending, 41, at_mid + 8, model(mid)).is_err());
    assert!(resume_producer(pending, 41, at_mid + size + 8, model(mid)).is_err());
    assert!(resume_producer(pending, 42, at_mid + size + 8, model(mid)).is_err());
    assert!(resume_producer(pending, 40, at_mid + size, model(mid)).is_err());
    // PENDING elsewhere than the model puts message 41: the bookkeeping is wrong.
    assert!(resume_producer(pack(seq, at_mid + 8), 41, at_mid + 8, model(mid)).is_err());
    let pending = pack(seq, at_edge);
    assert_eq!(
        resume_producer(pending, 41, at_edge, model(edge)),
        Ok((41, NOT_DONE))
    );
    assert_eq!(
        resume_producer(pending, 41, at_edge + 8, model(edge)),
        Ok((41, PADDING))
    );
    assert_eq!(
        resume_producer(pending, 42, at_edge + 8 + size, model(edge)),
        Ok((42, CLEAN))
    );
    // Record 41 without the padding its lane needs (which the sum alone would not need).
    assert!(resume_producer(pending, 42, at_edge + size, model(edge)).is_err());

    // Consumer: front (skips padding), PENDING (41, record position), pop, DONE = 42.
    let total = 1000;
    let pending = pack(seq, at_mid);
    assert_eq!(resume_consumer(total, 0, 0, 0, model(mid)), Ok((0, FRESH)));
    assert!(resume_consumer(total, 0, 0, 64, model(mid)).is_err());
    assert_eq!(
        resume_consumer(total, pending, 41, at_mid, model(mid)),
        Ok((41, NOT_DONE))
    );
    assert_eq!(
        resume_consumer(total, pending, 41, at_mid + size, model(mid)),
        Ok((42, UNRECORDED))
    );
    assert_eq!(
        resume_consumer(total, pending, 42, at_mid + size, model(mid)),
        Ok((42, CLEAN))
    );
    // DONE says popped, yet the ring delivers it again: a duplicate.
    assert!(resume_consumer(total, pending, 42, at_mid, model(mid)).is_err());
    assert!(resume_consumer(total, pending, 42, at_mid + size + 8, model(mid)).is_err());
    // At the edge `front` skipped the lane's padding before it stored PENDING.
    let pending = pack(seq, at_edge + 8);
    assert_eq!(
        resume_consumer(total, pending, 41, at_edge + 8, model(edge)),
        Ok((41, NOT_DONE))
    );
    assert_eq!(
        resume_consumer(total, pending, 42, at_edge + 8 + size, model(edge)),
        Ok((42, CLEAN))
    );
    assert!(resume_consumer(total, pending, 42, at_edge + size, model(edge)).is_err());
    assert!(resume_consumer(total, pack(seq, at_edge), 41, at_edge, model(edge)).is_err());

    // Past the padding before message 42, in 42's lane (with one lane, placed so that 42 cannot
    // fit after 41; with more, 42's lane 8 bytes before its end).
    let next = record_size(message_len::<L>(direction, seq + 1));
    let next_lane = (seq as usize + 1) % L;
    let mut padded = crafted::<L>(direction, seq, 5 * lane_size - size - next + 8, 0);
    if L > 1 {
        padded.positions[next_lane] = 6 * lane_size - 8;
    }
    let mut popped = padded;
    popped.advance();
    let (skip, _) = popped.next_record();
    assert_eq!(skip, if L > 1 { 8 } else { next - 8 });
    let (pos, after) = (padded.position(), popped.position());
    let pending = pack(seq, pos);
    assert_eq!(
        resume_consumer(total, pending, 42, after + skip, model(padded)),
        Ok((42, PADDING))
    );
    assert!(resume_consumer(total, pending, 41, after + skip, model(padded)).is_err());
    assert_eq!(
        resume_consumer(total, pending, 42, after, model(padded)),
        Ok((42, CLEAN))
    );
    // The last message has no successor whose padding `front` could have skipped.
    assert!(resume_consumer(42, pending, 42, after + skip, model(padded)).is_err());
    if L > 1 {
        // The padding is 42's lane's to need: with room there, the padding 41's lane would need
        // for message 42 is not a position the ring can show.
        let mut roomy = padded;
        roomy.positions[next_lane] = 3 * lane_size;
        let mut popped = roomy;
        popped.advance();
        assert_eq!(popped.next_record().0, 0);
        let wrong = next - 8;
        let pending = pack(seq, roomy.position());
        let after = popped.position();
        assert!(resume_consumer(total, pending, 42, after + wrong, model(roomy)).is_err());
        assert_eq!(
            resume_consumer(total, pending, 42, after, model(roomy)),
            Ok((42, CLEAN))
        );
    }
}

#[test]
fn model_follows_the_rings_positions() {
    model_follows_the_rings_positions_on::<1>();
    model_follows_the_rings_positions_on::<16>();
}

/// The model against a real channel, in one process: after every push, `Full`, `front`, pop and
/// `Empty` the handles' positions are where the model says, over a stream that laps every lane
/// many times. The producer runs ahead until `Full` and the consumer now and then drains the
/// ring, so that padding published before a refused message, and padding skipped before a
/// message not yet pushed, both happen (and are counted, to be sure they did).
fn model_follows_the_rings_positions_on<const L: usize>() {
    let dir = tempfile::tempdir().unwrap();
    let options = ChannelOptions::new().dir(dir.path());
    let (mut tx, _a_rx) = Chan::<L>::create("model", End::A, &options)
        .unwrap()
        .split();
    let (_b_tx, mut rx) = Chan::<L>::open("model", End::B, &options).unwrap().split();
    let direction = Direction::AToB;
    let (mut sent, mut received) = (Lanes::<L>::new(direction), Lanes::<L>::new(direction));
    let total = 20_000;
    let mut rng = Rng(L as u64);
    let (mut padded_refusals, mut padded_waits) = (0, 0);
    while received.next < total {
        while sent.next < total {
            let (padding, _) = sent.next_record();
            let before = sent.position();
            let len = message_len::<L>(direction, sent.next);
            match tx.alloc(len, message_tag(sent.next)) {
                Ok(slot) => slot.push(),
                Err(SendError::Full) => {
                    let tail = tx.position();
                    assert!(
                        tail == before || tail == before + padding,
                        "{L} lanes, Full on message {}: {tail} {before} {padding}",
                        sent.next
                    );
                    padded_refusals += usize::from(tail != before);
                    break;
                }
                Err(error) => panic!("alloc: {error}"),
            }
            sent.advance();
            assert_eq!(
                tx.position(),
                sent.position(),
                "{L} lanes, push {}",
                sent.next
            );
        }
        let drain = rng.below(4) == 0;
        let mut pops = rng.below(64);
        while drain || pops > 0 {
            pops = pops.saturating_sub(1);
            let (padding, _) = received.next_record();
            let before = received.position();
            match rx.front() {
                Ok(message) => assert_eq!(
                    (message.tag(), message.len()),
                    (
                        message_tag(received.next),
                        message_len::<L>(direction, received.next) as usize
                    )
                ),
                Err(RecvError::Empty) => {
                    let head = rx.position();
                    assert!(
                        head == before || head == before + padding,
                        "{L} lanes, Empty at message {}: {head} {before} {padding}",
                        received.next
                    );
                    padded_waits += usize::from(head != before);
                    break;
                }
                Err(error) => panic!("front: {error}"),
            }
            assert_eq!(rx.position(), before + padding, "{L} lanes, front");
            rx.pop().unwrap();
            received.advance();
            assert_eq!(rx.position(), received.position(), "{L} lanes, pop");
        }
    }
    assert!(
        padded_refusals > 0 && padded_waits > 0,
        "{L} lanes: {padded_refusals} refusals after padding, {padded_waits} waits past it"
    );
}
