//! Functional tests of the read-ahead over a one-lane `MessageRing` (`src/read_ahead.rs`): runs
//! of published records read as raw bytes without popping, parsed and checked byte for byte
//! against what was pushed. Covers the empty ring, the record format, the buffer's end and the
//! padding there, the byte limit, cursors advanced by partial byte counts, pops that overtake a
//! cursor, cursors of another ring, a property test against a model of the queue, and records
//! that a buggy or hostile peer could leave in shared memory.
// The loom build (`--cfg loom`) runs only `tests/loom.rs`: its rings exist only inside a
// loom model, and have no `init_in_place`, `attach` or slice views.
#![cfg(not(loom))]

mod common;

use std::collections::VecDeque;
use std::mem;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{owner, proptest_config, Region};
use proptest::prelude::*;
use spsc_core::{
    AttachError, MessageConsumer, MessageProducer, MessageReceiver, MessageRing, MessageSender,
    PublishedRun, ReadAhead, RecvError, SendError, SendSlot,
};

/// Record format (`src/message_ring.rs`, module docs): an 8-byte header, the commit word (bit 0
/// "published", bit 1 "padding", the tag in bits 16..32) and the payload length, both
/// little-endian `u32`, then the payload padded to 8 bytes.
const HEADER: usize = 8;
const PUBLISHED: u32 = 1;
const PADDING: u32 = 2;
/// Offset of the consumer's index word: the second 128-byte line, after the control block (part
/// of the shared-memory format, locked by `src/shared_layout.rs`).
const HEAD_OFFSET: usize = 128;

/// Bytes a record with a payload of `len` bytes occupies.
fn record_size(len: usize) -> usize {
    HEADER + len.next_multiple_of(8)
}

fn pattern(seq: u32, len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (seq.wrapping_mul(131).wrapping_add(i.wrapping_mul(7)) >> 1) as u8 ^ 0x5A)
        .collect()
}

/// A message as sent and as parsed back from a run: tag and payload.
type Msg = (u16, Vec<u8>);

/// Parses a run's bytes into its message records, checking the format: whole records only, each
/// a published message (no padding, no unknown flags), its payload inside the run.
fn parse(bytes: &[u8]) -> Vec<Msg> {
    let mut messages = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        assert!(
            at + HEADER <= bytes.len(),
            "a header cut short at byte {at} of {}",
            bytes.len()
        );
        let commit = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        assert_eq!(
            commit & 0xFFFF,
            PUBLISHED,
            "commit word {commit:#x} at byte {at}: not a published message"
        );
        let size = record_size(len);
        assert!(
            at + size <= bytes.len(),
            "record of {size} bytes at byte {at} runs past the run's {} bytes",
            bytes.len()
        );
        messages.push((
            (commit >> 16) as u16,
            bytes[at + HEADER..at + HEADER + len].to_vec(),
        ));
        at += size;
    }
    messages
}

/// The sizes of a run's records, from their length words.
fn record_sizes(bytes: &[u8]) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        sizes.push(record_size(len));
        at += record_size(len);
    }
    sizes
}

/// Where the buffer of `ring` starts in memory.
fn data_base<const C: usize>(ring: &MessageRing<C>) -> usize {
    ring as *const MessageRing<C> as usize + MessageRing::<C>::LAYOUT.data_offset as usize
}

/// Byte offset in the buffer at `base` where `run` starts, checking that it lies inside.
fn offset_in_buffer<const C: usize>(run: &PublishedRun<'_>, base: usize) -> usize {
    let offset = run.bytes().as_ptr() as usize - base;
    assert!(
        offset + run.bytes().len() <= C,
        "run of {} bytes at offset {offset} leaves the {C}-byte buffer",
        run.bytes().len()
    );
    offset
}

/// Sends `(seq as tag, pattern(seq, len))` and remembers it in `sent`.
fn send<const C: usize>(
    tx: &mut MessageProducer<'_, C>,
    sent: &mut VecDeque<Msg>,
    seq: u32,
    len: u32,
) {
    let payload = pattern(seq, len);
    tx.send(seq as u16, &payload)
        .unwrap_or_else(|error| panic!("send of {len} bytes: {error}"));
    sent.push_back((seq as u16, payload));
}

/// Pops the front message and checks it is the oldest in `sent`.
fn pop<const C: usize>(rx: &mut MessageConsumer<'_, C>, sent: &mut VecDeque<Msg>) {
    let expected = sent.pop_front().expect("a message to pop");
    assert_eq!(
        rx.recv_with(|m| (m.tag(), m.payload().to_vec())),
        Ok(expected)
    );
}

/// The whole run from `cursor`, parsed.
fn run_messages<const C: usize>(rx: &mut MessageConsumer<'_, C>, cursor: ReadAhead) -> Vec<Msg> {
    parse(rx.published_run(cursor, usize::MAX).unwrap().bytes())
}

// ---------------------------------------------------------------------------------------------
// The record format, the buffer's end, the byte limit.

/// Checks that every run from the front is empty, at `position`.
fn check_empty<const C: usize>(rx: &mut MessageConsumer<'_, C>, position: u32) {
    let cursor = rx.read_ahead();
    assert_eq!(cursor.position(), position);
    assert_eq!(cursor.position(), rx.position());
    for max_bytes in [0, 1, 8, 4096, usize::MAX] {
        let run = rx.published_run(cursor, max_bytes).unwrap();
        assert!(run.bytes().is_empty(), "max_bytes {max_bytes}");
        assert_eq!(run.messages(), 0);
        assert_eq!(run.start(), cursor);
        for bytes in [0, 1, 7, 8, 100, usize::MAX] {
            assert_eq!(
                run.cursor_after(bytes),
                (cursor, 0),
                "cursor_after({bytes})"
            );
        }
    }
    assert!(rx.is_empty());
}

#[test]
fn an_empty_ring_gives_an_empty_run() {
    let mut ring = MessageRing::<256>::new();
    let (mut tx, mut rx) = ring.split();
    check_empty(&mut rx, 0);
    // Again once messages went through, and with one allocated but not pushed.
    let mut sent = VecDeque::new();
    for seq in 0..5 {
        send(&mut tx, &mut sent, seq, 20);
        pop(&mut rx, &mut sent);
    }
    check_empty(&mut rx, 5 * 32);
    let mut slot = tx.alloc(40, 9).unwrap();
    slot.payload_mut().fill(0xEE);
    check_empty(&mut rx, 5 * 32);
    slot.push();
    let front = rx.read_ahead();
    let messages = run_messages(&mut rx, front);
    assert_eq!(messages, vec![(9, vec![0xEE; 40])]);
    let cursor = rx.read_ahead();
    let debug = format!("{cursor:?}");
    assert!(
        debug.contains("ReadAhead") && debug.contains("160"),
        "{debug}"
    );
}

#[test]
fn a_run_holds_exactly_the_records_pushed() {
    let mut ring = Box::new(MessageRing::<4096>::new());
    let base = data_base(&ring);
    let (mut tx, mut rx) = ring.split();
    let max = MessageRing::<4096>::MAX_PAYLOAD;
    let mut sent = VecDeque::new();
    // Every length class modulo 8, empty payloads, and the largest one; tags 0 and u16::MAX.
    let lens = [0, 1, 7, 8, 9, 15, 16, 17, 100, 0, 63, max];
    for (seq, &len) in lens.iter().enumerate() {
        send(&mut tx, &mut sent, seq as u32, len);
    }
    tx.send(0, b"tag 0").unwrap();
    sent.push_back((0, b"tag 0".to_vec()));
    tx.send(u16::MAX, b"tag max").unwrap();
    sent.push_back((u16::MAX, b"tag max".to_vec()));
    // An allocated, unpushed message ends the run (the slot lives to the end of the test).
    let _slot = tx.alloc(10, 77).unwrap();

    let front = rx.read_ahead();
    let run = rx.published_run(front, usize::MAX).unwrap();
    assert_eq!(run.start(), front);
    assert_eq!(offset_in_buffer::<4096>(&run, base), 0);
    assert_eq!(run.messages() as usize, sent.len());
    let bytes = run.bytes();
    let expected_len: usize = sent.iter().map(|(_, p)| record_size(p.len())).sum();
    assert_eq!(bytes.len(), expected_len);
    assert_eq!(
        parse(bytes),
        sent.iter().cloned().collect::<Vec<_>>(),
        "tags and payloads"
    );
    // The headers byte for byte: commit word `1 | tag << 16`, then the length.
    let mut at = 0;
    for (tag, payload) in &sent {
        assert_eq!(
            bytes[at..at + 4],
            (PUBLISHED | u32::from(*tag) << 16).to_le_bytes()
        );
        assert_eq!(bytes[at + 4..at + 8], (payload.len() as u32).to_le_bytes());
        assert_eq!(&bytes[at + 8..at + 8 + payload.len()], &payload[..]);
        at += record_size(payload.len());
    }
    let copy = bytes.to_vec();
    // Reading ahead pops nothing: the run reads the same again, and the receiver still gets all.
    let again = rx.published_run(front, usize::MAX).unwrap();
    assert_eq!(again.bytes(), &copy[..]);
    assert_eq!(
        again.bytes().as_ptr() as usize,
        base,
        "read in place, at the same bytes"
    );
    while !sent.is_empty() {
        pop(&mut rx, &mut sent);
    }
    assert!(rx.is_empty());
}

#[test]
fn a_run_stops_at_the_padding_and_the_next_starts_at_offset_0() {
    let mut ring = MessageRing::<256>::new();
    let base = data_base(&ring);
    let (mut tx, mut rx) = ring.split();
    let mut sent = VecDeque::new();
    // Records at 0..16, 16..112 and 112..200; popping the first frees room for the padding.
    send(&mut tx, &mut sent, 0, 8);
    send(&mut tx, &mut sent, 1, 88);
    send(&mut tx, &mut sent, 2, 80);
    pop(&mut rx, &mut sent);
    // A 72-byte record does not fit before the end: the producer pads 200..256, then finds no
    // room at the start (the consumer is at 16), so only the padding is published.
    assert_eq!(tx.alloc(64, 3).map(drop), Err(SendError::Full));
    assert_eq!(tx.position(), 256);

    let front = rx.read_ahead();
    assert_eq!(front.position(), 16);
    let run = rx.published_run(front, usize::MAX).unwrap();
    assert_eq!(run.messages(), 2, "the run stops before the padding");
    assert_eq!(run.bytes().len(), 96 + 88);
    assert_eq!(offset_in_buffer::<256>(&run, base), 16);
    assert_eq!(parse(run.bytes()), Vec::from(sent.clone()));
    let (at_padding, partial) = run.cursor_after(usize::MAX);
    assert_eq!((at_padding.position(), partial), (200, 0));
    // From the padding: skipped, nothing published after it yet.
    let run = rx.published_run(at_padding, usize::MAX).unwrap();
    assert!(run.bytes().is_empty());
    assert_eq!(run.messages(), 0);
    assert_eq!(run.start().position(), 256, "the padding is skipped");
    assert_eq!(run.cursor_after(10), (run.start(), 0));
    let past_padding = run.start();

    // Room at the start once the consumer moves on; the record goes to offset 0.
    pop(&mut rx, &mut sent);
    send(&mut tx, &mut sent, 3, 64);
    let run = rx.published_run(at_padding, usize::MAX).unwrap();
    assert_eq!(run.start().position(), 256);
    assert_eq!(offset_in_buffer::<256>(&run, base), 0);
    assert_eq!(parse(run.bytes()), vec![sent[1].clone()]);
    // From the front, the run still stops at the padding.
    let run = rx.published_run(rx.read_ahead(), usize::MAX).unwrap();
    assert_eq!(parse(run.bytes()), vec![sent[0].clone()]);
    let (cursor, _) = run.cursor_after(usize::MAX);
    assert_eq!(cursor, at_padding);
    // The empty run's start (past the padding) serves as a cursor too.
    assert_eq!(run_messages(&mut rx, past_padding), vec![sent[1].clone()]);
    // Once the front reaches the padding, the run from the front skips it too.
    pop(&mut rx, &mut sent);
    assert_eq!(rx.read_ahead(), at_padding);
    let run = rx.published_run(rx.read_ahead(), 0).unwrap();
    assert_eq!(run.start(), past_padding);
    assert_eq!(parse(run.bytes()), Vec::from(sent.clone()));
}

#[test]
fn a_record_ending_at_the_buffer_end_ends_the_run() {
    let mut ring = MessageRing::<256>::new();
    let base = data_base(&ring);
    let (mut tx, mut rx) = ring.split();
    let mut sent = VecDeque::new();
    for seq in 0..3 {
        send(&mut tx, &mut sent, seq, 56);
    }
    pop(&mut rx, &mut sent);
    // 64..256 holds three 64-byte records, the last one ending at the end; no padding follows.
    send(&mut tx, &mut sent, 3, 56);
    send(&mut tx, &mut sent, 4, 8);
    assert_eq!(tx.position(), 256 + 16);
    let run = rx.published_run(rx.read_ahead(), usize::MAX).unwrap();
    assert_eq!(offset_in_buffer::<256>(&run, base), 64);
    assert_eq!(run.messages(), 3);
    assert_eq!(run.bytes().len(), 192);
    assert_eq!(parse(run.bytes()), Vec::from(sent.clone())[..3].to_vec());
    let (cursor, partial) = run.cursor_after(192);
    assert_eq!((cursor.position(), partial), (256, 0));
    let run = rx.published_run(cursor, usize::MAX).unwrap();
    assert_eq!(run.start(), cursor);
    assert_eq!(offset_in_buffer::<256>(&run, base), 0);
    assert_eq!(parse(run.bytes()), vec![sent[3].clone()]);
}

#[test]
fn max_bytes_limits_the_run_to_whole_records_but_never_below_one() {
    let mut ring = MessageRing::<1024>::new();
    let (mut tx, mut rx) = ring.split();
    let mut sent = VecDeque::new();
    // One 104-byte record, then five of 24.
    send(&mut tx, &mut sent, 0, 96);
    for seq in 1..6 {
        send(&mut tx, &mut sent, seq, 16);
    }
    let all = Vec::from(sent.clone());
    let front = rx.read_ahead();
    for (max_bytes, messages) in [
        (0, 1),
        (1, 1),
        (8, 1),
        (103, 1),
        (104, 1),
        (127, 1),
        (128, 2),
        (151, 2),
        (152, 3),
        (104 + 5 * 24 - 1, 5),
        (104 + 5 * 24, 6),
        (usize::MAX, 6),
    ] {
        let run = rx.published_run(front, max_bytes).unwrap();
        assert_eq!(run.messages(), messages, "max_bytes {max_bytes}");
        assert_eq!(parse(run.bytes()), all[..messages as usize].to_vec());
        let len = run.bytes().len();
        assert!(
            len <= max_bytes.max(104),
            "max_bytes {max_bytes}: {len} bytes"
        );
        // Past the run counts as the whole run, even though more records follow in the ring.
        assert_eq!(
            run.cursor_after(len + 50),
            run.cursor_after(len),
            "max_bytes {max_bytes}"
        );
        assert_eq!(run.cursor_after(len).1, 0);
    }
    // From the second record, small limits give one 24-byte record each.
    let (second, _) = rx.published_run(front, 0).unwrap().cursor_after(104);
    let mut cursor = second;
    for expected in &all[1..] {
        let run = rx.published_run(cursor, 10).unwrap();
        assert_eq!(parse(run.bytes()), vec![expected.clone()]);
        cursor = run.cursor_after(usize::MAX).0;
    }
    assert_eq!(rx.published_run(cursor, 10).unwrap().messages(), 0);
    assert_eq!(cursor.position(), tx.position());
}

// ---------------------------------------------------------------------------------------------
// Cursors.

/// Whole records passed and bytes into the next for every byte count, including past the run;
/// the run from each cursor is the rest of the run.
#[test]
fn cursor_after_counts_whole_records_and_the_bytes_into_the_next() {
    let mut ring = MessageRing::<1024>::new();
    let base = data_base(&ring);
    let (mut tx, mut rx) = ring.split();
    let mut sent = VecDeque::new();
    // Records of 8, 16, 24, 16 and 48 bytes: 112 in all.
    for (seq, len) in [0, 5, 16, 1, 40].into_iter().enumerate() {
        send(&mut tx, &mut sent, seq as u32, len);
    }
    let starts = [0usize, 8, 24, 48, 64, 112];
    let front = rx.read_ahead();
    let run = rx.published_run(front, usize::MAX).unwrap();
    let bytes = run.bytes().to_vec();
    assert_eq!(bytes.len(), 112);
    assert_eq!(record_sizes(&bytes), [8, 16, 24, 16, 48]);
    let expected = |count: usize| {
        let clamped = count.min(112);
        let passed = starts.iter().rposition(|&s| s <= clamped).unwrap();
        (passed, starts[passed], clamped - starts[passed])
    };
    // The named cases: nothing, mid-header, exact boundaries, mid-payload, one byte short of the
    // run, the run, past it.
    for (count, passed, partial) in [
        (0, 0, 0),
        (3, 0, 3),
        (8, 1, 0),
        (8 + 5, 1, 5),
        (8 + 12, 1, 12),
        (24, 2, 0),
        (24 + 7, 2, 7),
        (24 + 8 + 10, 2, 18),
        (64 + 47, 4, 47),
        (112, 5, 0),
        (113, 5, 0),
        (usize::MAX, 5, 0),
    ] {
        assert_eq!(expected(count), (passed, starts[passed], partial));
        let (cursor, into_next) = run.cursor_after(count);
        assert_eq!(
            (cursor.position(), into_next),
            (starts[passed] as u32, partial),
            "cursor_after({count})"
        );
    }
    let cursors: Vec<_> = (0..=130).map(|count| run.cursor_after(count)).collect();
    for (count, &(cursor, into_next)) in cursors.iter().enumerate() {
        let (passed, start, partial) = expected(count);
        assert_eq!(
            (cursor.position(), into_next),
            (start as u32, partial),
            "cursor_after({count})"
        );
        let rest = rx.published_run(cursor, usize::MAX).unwrap();
        assert_eq!(rest.start(), cursor);
        assert_eq!(rest.messages() as usize, 5 - passed);
        assert_eq!(offset_in_buffer::<1024>(&rest, base), start);
        assert_eq!(rest.bytes(), &bytes[start..], "run after {count} bytes");
        assert_eq!(
            parse(rest.bytes()),
            Vec::from(sent.clone())[passed..].to_vec()
        );
        // The bytes into the next record are the start of the next run.
        assert!(into_next < rest.bytes().len() || into_next == 0);
    }
    // Nothing was popped.
    assert_eq!(rx.read_ahead(), front);
    while !sent.is_empty() {
        pop(&mut rx, &mut sent);
    }
}

#[test]
fn pops_that_overtake_a_cursor_make_the_run_start_at_the_front() {
    let mut ring = MessageRing::<1024>::new();
    let (mut tx, mut rx) = ring.split();
    let mut sent = VecDeque::new();
    for seq in 0..6 {
        send(&mut tx, &mut sent, seq, 16);
    }
    let all = Vec::from(sent.clone());
    let front = rx.read_ahead();
    // Three records and 5 bytes of the fourth written.
    let (cursor, partial) = rx
        .published_run(front, usize::MAX)
        .unwrap()
        .cursor_after(3 * 24 + 5);
    assert_eq!((cursor.position(), partial), (72, 5));
    // Pops behind the cursor, then up to it: the run still starts at the cursor.
    for popped in 1..=3 {
        pop(&mut rx, &mut sent);
        let run = rx.published_run(cursor, usize::MAX).unwrap();
        assert_eq!(run.start(), cursor, "after {popped} pops");
        assert_eq!(parse(run.bytes()), all[3..].to_vec());
    }
    assert_eq!(rx.read_ahead(), cursor, "popped up to the cursor");
    // One more pop passes the cursor: the run starts at the front.
    pop(&mut rx, &mut sent);
    let new_front = rx.read_ahead();
    let run = rx.published_run(cursor, usize::MAX).unwrap();
    assert_eq!(run.start(), new_front);
    assert_eq!(run.start().position(), 96);
    assert_eq!(parse(run.bytes()), all[4..].to_vec());
    let (from_overtaken, _) = run.cursor_after(0);
    assert_eq!(from_overtaken, new_front);
    // Everything popped: an empty run at the front; new records are read from there.
    while !sent.is_empty() {
        pop(&mut rx, &mut sent);
    }
    let run = rx.published_run(cursor, usize::MAX).unwrap();
    assert_eq!(run.messages(), 0);
    assert_eq!(run.start(), rx.read_ahead());
    send(&mut tx, &mut sent, 6, 30);
    assert_eq!(run_messages(&mut rx, cursor), Vec::from(sent.clone()));
    assert_eq!(run_messages(&mut rx, front), Vec::from(sent.clone()));
}

#[test]
fn a_cursor_of_another_ring_is_refused() {
    let mut first = MessageRing::<256>::new();
    let mut second = MessageRing::<256>::new();
    let mut larger = MessageRing::<512>::new();
    let (mut tx1, mut rx1) = first.split();
    let (mut tx2, mut rx2) = second.split();
    let (mut tx3, mut rx3) = larger.split();
    // The same records in each, so the positions would fit.
    for tx in [&mut tx1, &mut tx2] {
        tx.send(1, b"one").unwrap();
        tx.send(2, b"two").unwrap();
    }
    tx3.send(1, b"one").unwrap();
    tx3.send(2, b"two").unwrap();
    let front1 = rx1.read_ahead();
    let (after1, _) = rx1
        .published_run(front1, usize::MAX)
        .unwrap()
        .cursor_after(16);
    let front2 = rx2.read_ahead();
    assert_eq!(front1.position(), front2.position());
    assert_ne!(front1, front2, "cursors of two rings differ");
    for cursor in [front1, after1] {
        for max_bytes in [0, usize::MAX] {
            let error = rx2.published_run(cursor, max_bytes).unwrap_err();
            assert!(
                matches!(error, RecvError::Corrupt { reason } if reason.contains("another ring")),
                "{error:?}"
            );
            assert!(matches!(
                rx3.published_run(cursor, max_bytes),
                Err(RecvError::Corrupt { .. })
            ));
        }
    }
    assert!(matches!(
        rx1.published_run(front2, usize::MAX),
        Err(RecvError::Corrupt { .. })
    ));
    // Each ring's own cursors still work, and nothing was consumed.
    assert_eq!(run_messages(&mut rx1, after1).len(), 1);
    assert_eq!(run_messages(&mut rx2, front2).len(), 2);
    let front3 = rx3.read_ahead();
    assert_eq!(run_messages(&mut rx3, front3).len(), 2);
    assert_eq!(rx2.recv_with(|m| m.tag()), Ok(1));
}

/// A cursor belongs to the ring, not to the consumer handle: it stays valid for a consumer that
/// claims the ring later (the transport's take-over case).
#[test]
fn a_cursor_outlives_the_consumer_that_made_it() {
    let ring = MessageRing::<256>::new();
    let mut tx = ring.claim_producer(owner(1)).unwrap();
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    let mut sent = VecDeque::new();
    for seq in 0..4 {
        send(&mut tx, &mut sent, seq, 12);
    }
    let (cursor, _) = rx
        .published_run(rx.read_ahead(), usize::MAX)
        .unwrap()
        .cursor_after(2 * 24);
    pop(&mut rx, &mut sent);
    drop(rx);
    let mut rx = ring.claim_consumer(owner(3)).unwrap();
    let run = rx.published_run(cursor, usize::MAX).unwrap();
    assert_eq!(run.start(), cursor);
    assert_eq!(parse(run.bytes()), Vec::from(sent.clone())[1..].to_vec());
}

/// A run stays valid, and unchanged, while the producer keeps pushing behind it; the next run
/// includes what was pushed meanwhile (under Miri this checks the run's borrow against the
/// producer's writes).
#[test]
fn a_run_is_stable_while_the_producer_pushes() {
    let mut ring = MessageRing::<512>::new();
    let (mut tx, mut rx) = ring.split();
    let mut sent = VecDeque::new();
    for seq in 0..3 {
        send(&mut tx, &mut sent, seq, 10 + seq);
    }
    let front = rx.read_ahead();
    let run = rx.published_run(front, usize::MAX).unwrap();
    let copy = run.bytes().to_vec();
    let mut seq = 3;
    while tx.has_room(20).unwrap() {
        send(&mut tx, &mut sent, seq, 20);
        seq += 1;
        assert_eq!(run.bytes(), &copy[..]);
    }
    assert_eq!(parse(run.bytes()), Vec::from(sent.clone())[..3].to_vec());
    let (cursor, _) = run.cursor_after(usize::MAX);
    assert_eq!(
        run_messages(&mut rx, cursor),
        Vec::from(sent.clone())[3..].to_vec()
    );
    assert_eq!(run_messages(&mut rx, front), Vec::from(sent.clone()));
}

/// Positions that wrap past `u32::MAX` while the records wrap round the buffer.
#[test]
fn runs_follow_positions_past_u32_max() {
    for start in [u32::MAX - 7, u32::MAX - 127, u32::MAX - 200] {
        let start = start & !7;
        let mut region = region_for::<256>();
        let mut raw = RawRing::<256>::init(&mut region);
        raw.set_head(start);
        let ring = raw.attach().unwrap();
        let base = data_base(ring);
        let mut tx = ring.claim_producer(owner(1)).unwrap();
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        let mut sent = VecDeque::new();
        let mut cursor = rx.read_ahead();
        assert_eq!(cursor.position(), start);
        let mut forwarded = 0usize;
        for seq in 0..40u32 {
            let len = (seq * 29) % (MessageRing::<256>::MAX_PAYLOAD + 1);
            while !tx.has_room(len).unwrap() {
                pop(&mut rx, &mut sent);
                forwarded = forwarded.saturating_sub(1);
            }
            send(&mut tx, &mut sent, seq, len);
            // Forward everything published from the cursor.
            loop {
                let run = rx.published_run(cursor, usize::MAX).unwrap();
                if run.messages() == 0 {
                    break;
                }
                let offset = offset_in_buffer::<256>(&run, base);
                assert_eq!(offset as u32, run.start().position() % 256);
                let messages = parse(run.bytes());
                assert_eq!(
                    messages,
                    Vec::from(sent.clone())[forwarded..forwarded + messages.len()].to_vec(),
                    "start {start}, seq {seq}"
                );
                forwarded += messages.len();
                cursor = run.cursor_after(run.bytes().len()).0;
            }
            assert_eq!(forwarded, sent.len());
            assert_eq!(cursor.position(), tx.position());
        }
        assert!(
            rx.position() < start,
            "start {start}: the consumer's position wrapped"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Property test against a model of the queue: positions, padding and what every run holds.

#[derive(Clone, Debug)]
enum Take {
    /// This many 256ths of the run left after the bytes already written of its first record.
    Fraction(u16),
    /// Up to the end of this many whole records of the run.
    Records(usize),
    /// This many bytes past the run's end.
    Beyond(usize),
}

#[derive(Clone, Debug)]
enum Op {
    Push(u32, u16),
    Pop,
    /// Reads ahead from the cursor with a byte limit, writes part of the run "to a socket" and
    /// continues from `cursor_after` what was written.
    ReadAhead(usize, Take),
    ReclaimConsumer,
}

fn op(max_payload: u32, capacity: usize) -> impl Strategy<Value = Op> {
    let len = prop_oneof![
        3 => 0..=16u32,
        3 => 0..=max_payload,
        1 => max_payload - 8..=max_payload,
    ];
    let max_bytes = prop_oneof![
        1 => Just(0usize),
        3 => 0..=capacity,
        2 => Just(usize::MAX),
    ];
    let take = prop_oneof![
        4 => (0..=256u16).prop_map(Take::Fraction),
        2 => (0..4usize).prop_map(Take::Records),
        1 => (0..20usize).prop_map(Take::Beyond),
    ];
    prop_oneof![
        5 => (len, any::<u16>()).prop_map(|(len, tag)| Op::Push(len, tag)),
        3 => Just(Op::Pop),
        4 => (max_bytes, take).prop_map(|(max, take)| Op::ReadAhead(max, take)),
        1 => Just(Op::ReclaimConsumer),
    ]
}

struct Queued {
    position: u32,
    tag: u16,
    payload: Vec<u8>,
}

impl Queued {
    fn size(&self) -> u32 {
        record_size(self.payload.len()) as u32
    }

    fn end(&self) -> u32 {
        self.position.wrapping_add(self.size())
    }
}

/// A one-lane ring as its module docs specify it (8-byte headers, payloads rounded up to 8,
/// padding instead of wrapping past the end, 8 bytes reserved past the newest record), plus the
/// read-ahead's cursor and what a transport wrote from the runs.
struct Model<const C: usize> {
    head: u32,
    tail: u32,
    queue: VecDeque<Queued>,
    /// Where the cursor stands; `overtaken` once a pop passed it (the next run starts at the
    /// front then).
    cursor: u32,
    overtaken: bool,
    /// Queued messages before the cursor.
    ahead: usize,
    /// Bytes of the record at the cursor already written.
    partial: Vec<u8>,
    /// Every byte written from the runs, and the messages whose records it must hold.
    stream: Vec<u8>,
    written: Vec<Msg>,
}

impl<const C: usize> Model<C> {
    fn new(start: u32) -> Self {
        Self {
            head: start,
            tail: start,
            queue: VecDeque::new(),
            cursor: start,
            overtaken: false,
            ahead: 0,
            partial: Vec::new(),
            stream: Vec::new(),
            written: Vec::new(),
        }
    }

    fn fits(&self, end: u32) -> bool {
        end.wrapping_sub(self.head) <= C as u32
    }

    /// The outcome `alloc` must have; publishes the padding `alloc` publishes.
    fn alloc(&mut self, len: u32) -> Result<(), SendError> {
        let size = record_size(len as usize) as u32;
        let offset = self.tail % C as u32;
        if offset + size > C as u32 {
            let pad = C as u32 - offset;
            if !self.fits(self.tail.wrapping_add(pad + 8)) {
                return Err(SendError::Full);
            }
            self.tail = self.tail.wrapping_add(pad);
        }
        if !self.fits(self.tail.wrapping_add(size + 8)) {
            return Err(SendError::Full);
        }
        Ok(())
    }

    fn push(&mut self, tag: u16, payload: Vec<u8>) {
        let queued = Queued {
            position: self.tail,
            tag,
            payload,
        };
        self.tail = queued.end();
        self.queue.push_back(queued);
    }

    /// Pops the oldest message. A pop of the record at the cursor overtakes it; the bytes
    /// written of that record are taken back from the stream (a transport pops only what was
    /// acknowledged, so it never does that; the test does, to move the cursor).
    fn pop(&mut self) -> Option<Queued> {
        let popped = self.queue.pop_front()?;
        self.head = popped.end();
        if self.ahead > 0 {
            self.ahead -= 1;
        } else {
            self.overtaken = true;
            self.stream.truncate(self.stream.len() - self.partial.len());
            self.partial.clear();
        }
        Some(popped)
    }

    /// Where a run from the cursor starts and which queued messages it holds, for a byte limit.
    fn run(&self, max_bytes: usize) -> (u32, std::ops::Range<usize>) {
        let from = if self.overtaken {
            self.head
        } else {
            self.cursor
        };
        let first = self.ahead;
        let Some(queued) = self.queue.get(first) else {
            // Only a padding record can lie between the cursor and the producer's position:
            // the run starts past it.
            return (self.tail, first..first);
        };
        assert!(
            queued.position.wrapping_sub(from) < C as u32,
            "model: cursor {from} past the message at {}",
            queued.position
        );
        let mut end = first + 1;
        let mut len = queued.size() as usize;
        while let Some(next) = self.queue.get(end) {
            let previous = &self.queue[end - 1];
            let contiguous = next.position == previous.end() && next.position % C as u32 != 0;
            if !contiguous || len + next.size() as usize > max_bytes {
                break;
            }
            len += next.size() as usize;
            end += 1;
        }
        (queued.position, first..end)
    }

    fn messages(&self, range: std::ops::Range<usize>) -> Vec<Msg> {
        range
            .map(|i| (self.queue[i].tag, self.queue[i].payload.clone()))
            .collect()
    }
}

/// Reads ahead from `cursor` with a byte limit and checks the run against the model; then
/// "writes" part of it (after the bytes of its first record already written) and moves the
/// cursor past what was written with `cursor_after`.
fn read_ahead_step<const C: usize>(
    rx: &mut MessageConsumer<'_, C>,
    model: &mut Model<C>,
    cursor: &mut ReadAhead,
    base: usize,
    max_bytes: usize,
    take: &Take,
) -> Result<(), TestCaseError> {
    let (expected_start, range) = model.run(max_bytes);
    let run = rx.published_run(*cursor, max_bytes).unwrap();
    let bytes = run.bytes();
    prop_assert_eq!(run.start().position(), expected_start);
    prop_assert_eq!(run.messages() as usize, range.len());
    prop_assert_eq!(parse(bytes), model.messages(range.clone()));
    if !bytes.is_empty() {
        prop_assert_eq!(
            offset_in_buffer::<C>(&run, base) as u32,
            expected_start % C as u32
        );
    }
    // The bytes already written of the first record read the same again.
    let already = model.partial.len();
    prop_assert!(already <= bytes.len());
    prop_assert_eq!(&bytes[..already], &model.partial[..]);
    // Record boundaries in the run: 0, then each record's end.
    let mut boundaries = vec![0];
    for size in record_sizes(bytes) {
        boundaries.push(boundaries.last().unwrap() + size);
    }
    let count = match *take {
        Take::Fraction(f) => already + (bytes.len() - already) * usize::from(f) / 256,
        Take::Records(n) => boundaries[n.min(boundaries.len() - 1)].max(already),
        Take::Beyond(extra) => bytes.len() + extra,
    };
    let (next, into_next) = run.cursor_after(count);
    let clamped = count.min(bytes.len());
    let whole = boundaries.iter().rposition(|&b| b <= clamped).unwrap();
    let expected_next = expected_start.wrapping_add(boundaries[whole] as u32);
    prop_assert_eq!(next.position(), expected_next, "cursor_after({})", count);
    prop_assert_eq!(into_next, clamped - boundaries[whole]);
    model.stream.extend_from_slice(&bytes[already..clamped]);
    let passed = model.messages(range.start..range.start + whole);
    model.written.extend(passed);
    model.partial = bytes[boundaries[whole]..clamped].to_vec();
    model.cursor = expected_next;
    model.overtaken = false;
    model.ahead += whole;
    *cursor = next;
    Ok(())
}

/// Runs `ops` on a ring whose positions start at `start`, reading ahead from a cursor that
/// advances by partial byte counts, and checks every run, cursor and position against the model.
/// The bytes written from the runs, stitched across partial records, must parse into exactly
/// the messages the cursor passed.
fn run_model<const C: usize>(start: u32, ops: &[Op]) -> Result<(), TestCaseError> {
    let start = start & !7;
    let mut region = region_for::<C>();
    let mut raw = RawRing::<C>::init(&mut region);
    raw.set_head(start);
    let ring = raw.attach().unwrap();
    let base = data_base(ring);
    let mut ids = 10..;
    let mut tx = ring.claim_producer(owner(ids.next().unwrap())).unwrap();
    let mut rx = ring.claim_consumer(owner(ids.next().unwrap())).unwrap();
    let mut model = Model::<C>::new(start);
    let mut cursor = rx.read_ahead();
    let mut seq = 0u32;
    for op in ops {
        match op {
            Op::Push(len, tag) => {
                let expected = model.alloc(*len);
                let payload = pattern(seq, *len);
                let result = tx.send(*tag, &payload);
                prop_assert_eq!(result, expected, "send of {} bytes", len);
                if result.is_ok() {
                    model.push(*tag, payload);
                    seq += 1;
                } else {
                    prop_assert!(!model.queue.is_empty(), "Full with nothing queued");
                }
            }
            Op::Pop => {
                if let Some(expected) = model.pop() {
                    prop_assert_eq!(
                        rx.recv_with(|m| (m.tag(), m.payload().to_vec())),
                        Ok((expected.tag, expected.payload))
                    );
                }
            }
            Op::ReadAhead(max_bytes, take) => {
                read_ahead_step(&mut rx, &mut model, &mut cursor, base, *max_bytes, take)?;
            }
            Op::ReclaimConsumer => {
                drop(rx);
                rx = ring.claim_consumer(owner(ids.next().unwrap())).unwrap();
            }
        }
        prop_assert_eq!(tx.position(), model.tail);
        prop_assert_eq!(rx.position(), model.head);
    }
    // Write everything left from the cursor, a whole run at a time: at most the rest of the
    // buffer, then the records from its start.
    let mut rounds = 0;
    while model.ahead < model.queue.len() {
        read_ahead_step(
            &mut rx,
            &mut model,
            &mut cursor,
            base,
            usize::MAX,
            &Take::Beyond(0),
        )?;
        rounds += 1;
        prop_assert!(rounds <= 2, "a run ends only at the buffer's end");
    }
    prop_assert!(model.partial.is_empty());
    let run = rx.published_run(cursor, usize::MAX).unwrap();
    prop_assert_eq!(run.messages(), 0);
    prop_assert_eq!(run.start().position(), tx.position());
    prop_assert_eq!(parse(&model.stream), model.written.clone());
    while let Some(expected) = model.pop() {
        prop_assert_eq!(
            rx.recv_with(|m| (m.tag(), m.payload().to_vec())),
            Ok((expected.tag, expected.payload))
        );
    }
    prop_assert_eq!(rx.front().unwrap_err(), RecvError::Empty);
    Ok(())
}

fn start_position() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), u32::MAX - 4096..=u32::MAX, any::<u32>()]
}

fn ops_len() -> std::ops::Range<usize> {
    0..if cfg!(miri) { 40 } else { 300 }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn read_ahead_matches_the_model_128(
        start in start_position(),
        ops in prop::collection::vec(op(MessageRing::<128>::MAX_PAYLOAD, 128), ops_len()),
    ) {
        run_model::<128>(start, &ops)?;
    }

    #[test]
    fn read_ahead_matches_the_model_1024(
        start in start_position(),
        ops in prop::collection::vec(op(MessageRing::<1024>::MAX_PAYLOAD, 1024), ops_len()),
    ) {
        run_model::<1024>(start, &ops)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Corrupt records: a peer (another process) can write anything into the shared buffer. The
// read-ahead must report it, never panic or read out of bounds.

/// Memory for a one-lane `MessageRing<C>`.
fn region_for<const C: usize>() -> Region {
    Region::new(mem::size_of::<MessageRing<C>>())
}

/// Writes raw bytes of a ring being prepared in `region`, before any handle views it.
struct RawRing<const C: usize> {
    base: NonNull<u8>,
    len: usize,
}

impl<const C: usize> RawRing<C> {
    /// Initialises an empty ring in `region` and keeps only its address: no reference to the
    /// ring exists until [`attach`](Self::attach).
    fn init(region: &mut Region) -> Self {
        let len = region.len();
        let base = region.base();
        // SAFETY: `region` is valid, exclusively borrowed memory of `len` bytes; the returned
        // reference is dropped at once.
        unsafe { MessageRing::<C>::init_in_place(base, len) }.expect("region fits the ring");
        Self { base, len }
    }

    fn write_u32(&mut self, offset: usize, value: u32) {
        assert!(offset.is_multiple_of(4) && offset + 4 <= mem::size_of::<MessageRing<C>>());
        // SAFETY: in bounds of the ring (checked above) and 4-aligned in a 128-aligned region;
        // no handle or reference views the ring while it is prepared.
        unsafe { self.base.as_ptr().add(offset).cast::<u32>().write(value) }
    }

    /// Sets the consumer's index (and so the position every handle starts from).
    fn set_head(&mut self, head: u32) {
        self.write_u32(HEAD_OFFSET, head);
    }

    /// Writes a record header at buffer offset `at`.
    fn header(&mut self, at: u32, commit: u32, len: u32) {
        let data = MessageRing::<C>::LAYOUT.data_offset as usize + at as usize;
        self.write_u32(data, commit);
        self.write_u32(data + 4, len);
    }

    /// Views the prepared ring; the region stays borrowed by the caller for its lifetime.
    fn attach<'r>(&self) -> Result<&'r MessageRing<C>, AttachError> {
        // SAFETY: the region outlives the reference (the callers keep it alive for the test) and
        // is accessed only through the ring from now on.
        unsafe { MessageRing::<C>::attach(self.base, self.len) }
    }
}

/// A header word (4-aligned) of an attached ring's buffer, for simulating a peer that writes
/// records at runtime.
fn buffer_word<const C: usize>(ring: &MessageRing<C>, at: usize) -> &AtomicU32 {
    assert!(at.is_multiple_of(4) && at + 4 <= C);
    let ring: *const MessageRing<C> = ring;
    // SAFETY: the word lies inside the ring's buffer (checked above), 4-aligned in a 128-aligned
    // buffer; the buffer is shared mutable memory (an `UnsafeCell`) alive as long as the ring,
    // and the records' header words are accessed atomically.
    unsafe {
        &*ring
            .cast::<u8>()
            .add(MessageRing::<C>::LAYOUT.data_offset as usize + at)
            .cast::<AtomicU32>()
    }
}

fn assert_corrupt<const C: usize>(
    rx: &mut MessageConsumer<'_, C>,
    cursor: ReadAhead,
    max_bytes: usize,
    what: &str,
) {
    match rx.published_run(cursor, max_bytes) {
        Err(RecvError::Corrupt { reason }) => assert!(!reason.is_empty(), "{what}"),
        Err(error) => panic!("{what}: {error:?}"),
        Ok(run) => panic!(
            "{what}: a run of {} messages, {} bytes",
            run.messages(),
            run.bytes().len()
        ),
    }
}

/// A ring of `C` bytes from `head` with the records `(at, commit, len)` written; checks that a
/// run from the front reports corruption for every byte limit that reaches the bad record.
fn corrupt_from_front<const C: usize>(head: u32, records: &[(u32, u32, u32)], what: &str) {
    let mut region = region_for::<C>();
    let mut raw = RawRing::<C>::init(&mut region);
    raw.set_head(head);
    for &(at, commit, len) in records {
        raw.header(at, commit, len);
    }
    let ring = raw
        .attach()
        .expect("records are checked lazily, not by attach");
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    let front = rx.read_ahead();
    assert_corrupt(&mut rx, front, usize::MAX, what);
    // Asked again, still corrupt: nothing was skipped or consumed.
    assert_corrupt(&mut rx, front, usize::MAX, what);
    assert_eq!(rx.read_ahead(), front);
}

fn corrupt_records<const C: usize>() {
    let max = MessageRing::<C>::MAX_PAYLOAD;
    let c = C as u32;
    let valid = PUBLISHED | (7 << 16);
    // Unknown flag bits, with and without the published bit; a tag without the published bit.
    for commit in [
        PUBLISHED | 4,
        PUBLISHED | 0x8000,
        PUBLISHED | PADDING | 0x100,
        4,
        1 << 16,
        u32::MAX,
    ] {
        let what = format!("commit word {commit:#x}");
        corrupt_from_front::<C>(0, &[(0, commit, 8)], &what);
        corrupt_from_front::<C>(
            0,
            &[(0, valid, 8), (16, commit, 8)],
            &format!("{what} later"),
        );
    }
    // Padding at offset 0 (it would have to cover the whole buffer).
    corrupt_from_front::<C>(0, &[(0, PUBLISHED | PADDING, c - 8)], "padding at offset 0");
    // Padding that does not end at the end of the buffer.
    for len in [0, 8, c - 32, c - 16, c, u32::MAX] {
        let what = format!("padding len {len}");
        corrupt_from_front::<C>(16, &[(16, PUBLISHED | PADDING, len)], &what);
        corrupt_from_front::<C>(0, &[(0, valid, 8), (16, PUBLISHED | PADDING, len)], &what);
    }
    // Padding right after padding: the second one is at offset 0.
    corrupt_from_front::<C>(
        c - 16,
        &[
            (c - 16, PUBLISHED | PADDING, 8),
            (0, PUBLISHED | PADDING, c - 8),
        ],
        "padding after padding",
    );
    // A length beyond the largest payload, even where it would fit the buffer.
    for len in [max + 1, max + 8, c - 8, u32::MAX] {
        let what = format!("message len {len}");
        corrupt_from_front::<C>(0, &[(0, PUBLISHED, len)], &what);
        corrupt_from_front::<C>(0, &[(0, valid, 0), (8, PUBLISHED, len)], &what);
    }
    // A length within the largest payload that runs past the end of the buffer, directly or
    // after the padding is skipped.
    corrupt_from_front::<C>(c - 16, &[(c - 16, PUBLISHED, 9)], "record past the end");
    corrupt_from_front::<C>(
        c - 40,
        &[(c - 40, valid, 8), (c - 24, PUBLISHED, 17)],
        "second record past the end",
    );
}

#[test]
fn corrupt_records_are_reported_128() {
    corrupt_records::<128>();
}

#[test]
fn corrupt_records_are_reported_1024() {
    corrupt_records::<1024>();
}

/// A bad record behind valid ones: a run that reaches it reports it, a limit that stops short
/// of it may give the valid records before it (the walk may check the record it stops at);
/// either way nothing panics. From the front once the valid ones are popped, it is reported.
#[test]
fn a_corrupt_record_behind_valid_ones() {
    let mut region = region_for::<256>();
    let mut raw = RawRing::<256>::init(&mut region);
    raw.header(0, PUBLISHED | (1 << 16), 8);
    raw.header(16, PUBLISHED | (2 << 16), 8);
    raw.header(32, PUBLISHED | 4, 8);
    let ring = raw.attach().unwrap();
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    let front = rx.read_ahead();
    assert_corrupt(&mut rx, front, usize::MAX, "third record");
    for max_bytes in [0, 16, 31, 32] {
        match rx.published_run(front, max_bytes) {
            Ok(run) => {
                let tags: Vec<u16> = parse(run.bytes()).into_iter().map(|(t, _)| t).collect();
                assert!(
                    tags == [1] || tags == [1, 2],
                    "max_bytes {max_bytes}: {tags:?}"
                );
            }
            Err(error) => assert!(matches!(error, RecvError::Corrupt { .. }), "{error:?}"),
        }
    }
    assert_eq!(rx.recv_with(|m| m.tag()), Ok(1));
    assert_eq!(rx.recv_with(|m| m.tag()), Ok(2));
    let at_bad = rx.read_ahead();
    assert_eq!(at_bad.position(), 32);
    for max_bytes in [0, usize::MAX] {
        assert_corrupt(&mut rx, at_bad, max_bytes, "at the cursor");
        assert_corrupt(&mut rx, front, max_bytes, "from a popped-past cursor");
    }
    assert!(matches!(rx.front(), Err(RecvError::Corrupt { .. })));
}

/// Valid records that together claim more than the buffer holds, looping back to the start: the
/// walk is bounded and reports it.
#[test]
fn records_that_overrun_the_buffer_are_reported() {
    let mut region = region_for::<128>();
    let mut raw = RawRing::<128>::init(&mut region);
    for at in (0..128).step_by(32) {
        raw.header(at, PUBLISHED | (u32::from(at as u16) << 16), 24);
    }
    let ring = raw.attach().unwrap();
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    let front = rx.read_ahead();
    assert_corrupt(&mut rx, front, usize::MAX, "four records of 32 bytes");
    // Walking on with small limits stays bounded too: never more than a buffer past the front.
    let mut cursor = front;
    for _ in 0..8 {
        let head = rx.position();
        match rx.published_run(cursor, 0) {
            Ok(run) => {
                assert_eq!(run.messages(), 1);
                assert!(run.start().position().wrapping_sub(head) < 128);
                cursor = run.cursor_after(usize::MAX).0;
            }
            Err(error) => {
                assert!(matches!(error, RecvError::Corrupt { .. }), "{error:?}");
                return;
            }
        }
    }
    panic!("eight 32-byte records read ahead of a 128-byte buffer's front");
}

/// A peer that publishes a bad record at runtime, where the producer would write next.
#[test]
fn a_corrupt_record_published_at_runtime_is_reported() {
    let mut region = region_for::<256>();
    let raw = RawRing::<256>::init(&mut region);
    let ring = raw.attach().unwrap();
    let mut tx = ring.claim_producer(owner(1)).unwrap();
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    tx.send(1, b"first").unwrap();
    tx.send(2, b"second").unwrap();
    let front = rx.read_ahead();
    let (cursor, _) = rx
        .published_run(front, usize::MAX)
        .unwrap()
        .cursor_after(usize::MAX);
    let tail = tx.position() as usize % 256;
    drop(tx);
    // A length that runs past the end, then an unknown flag.
    buffer_word(ring, tail + 4).store(250, Ordering::Relaxed);
    buffer_word(ring, tail).store(PUBLISHED | (9 << 16), Ordering::Release);
    assert_corrupt(&mut rx, cursor, 0, "length past the end");
    assert_corrupt(
        &mut rx,
        front,
        usize::MAX,
        "length past the end, from the front",
    );
    buffer_word(ring, tail + 4).store(8, Ordering::Relaxed);
    buffer_word(ring, tail).store(PUBLISHED | 0x40, Ordering::Release);
    assert_corrupt(&mut rx, cursor, 0, "unknown flag");
    // The same record made valid reads as one.
    buffer_word(ring, tail).store(PUBLISHED | (9 << 16), Ordering::Release);
    let run = rx.published_run(cursor, usize::MAX).unwrap();
    assert_eq!(parse(run.bytes()).len(), 1);
    assert_eq!(parse(run.bytes())[0].0, 9);
}

/// One 8-byte unit of a buffer filled by a hostile peer: nothing, a message header, a padding
/// header, or any bits.
fn unit(capacity: u32) -> impl Strategy<Value = (u32, u32)> {
    prop_oneof![
        3 => Just((0u32, 0u32)),
        3 => (any::<u16>(), 0..=capacity / 2)
            .prop_map(|(tag, len)| (PUBLISHED | u32::from(tag) << 16, len)),
        1 => (0..=capacity).prop_map(|len| (PUBLISHED | PADDING, len)),
        1 => (any::<u32>(), any::<u32>()),
    ]
}

/// Whatever the peer wrote, the read-ahead returns whole, valid records inside the buffer or
/// `Corrupt`, and never panics; cursors never run more than a buffer ahead of the front.
fn arbitrary_contents<const C: usize>(
    head: u32,
    units: &[(u32, u32)],
    steps: &[(usize, u16, bool)],
) -> Result<(), TestCaseError> {
    let mut region = region_for::<C>();
    let mut raw = RawRing::<C>::init(&mut region);
    raw.set_head(head & !7);
    for (i, &(commit, len)) in units.iter().enumerate() {
        raw.header(8 * i as u32, commit, len);
    }
    let ring = raw.attach().unwrap();
    let base = data_base(ring);
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    let mut cursor = rx.read_ahead();
    for &(max_bytes, fraction, pop) in steps {
        if pop {
            let _ = rx.pop();
        }
        let head = rx.position();
        match rx.published_run(cursor, max_bytes) {
            Ok(run) => {
                let messages = parse(run.bytes());
                prop_assert_eq!(messages.len(), run.messages() as usize);
                if !run.bytes().is_empty() {
                    offset_in_buffer::<C>(&run, base);
                }
                prop_assert!(run.start().position().wrapping_sub(head) <= C as u32);
                let count = run.bytes().len() * usize::from(fraction) / 256;
                let (next, into_next) = run.cursor_after(count);
                prop_assert!(into_next <= count);
                prop_assert!(next.position().wrapping_sub(head) <= C as u32);
                cursor = next;
            }
            Err(RecvError::Corrupt { reason }) => prop_assert!(!reason.is_empty()),
            Err(error) => prop_assert!(false, "{:?}", error),
        }
    }
    Ok(())
}

fn steps() -> impl Strategy<Value = Vec<(usize, u16, bool)>> {
    let max_bytes = prop_oneof![Just(0usize), 0..=256usize, Just(usize::MAX)];
    prop::collection::vec(
        (max_bytes, 0..=300u16, prop::bool::weighted(0.3)),
        1..if cfg!(miri) { 8 } else { 24 },
    )
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn arbitrary_contents_never_panic_128(
        head in any::<u32>(),
        units in prop::collection::vec(unit(128), 16),
        steps in steps(),
    ) {
        arbitrary_contents::<128>(head, &units, &steps)?;
    }

    #[test]
    fn arbitrary_contents_never_panic_256(
        head in any::<u32>(),
        units in prop::collection::vec(unit(256), 32),
        steps in steps(),
    ) {
        arbitrary_contents::<256>(head, &units, &steps)?;
    }
}
