//! Functional tests of `MessageRing<C>` beyond the conformance suite: a property test against an
//! exact model of the record layout (padding and the reserved commit word included), positions
//! that wrap past `u32::MAX`, take-overs, and records that a buggy or hostile peer could leave in
//! shared memory.
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
    AttachError, ClaimError, MessageReceiver, MessageRing, MessageSender, RecvError, SendError,
    SendSlot,
};

/// Memory for a one-lane `MessageRing<C>`.
fn region_for<const C: usize>() -> Region {
    Region::new(mem::size_of::<MessageRing<C>>())
}

/// Offset of the consumer's index words (one per lane, `u32`): the second 128-byte line, after
/// the control block (part of the shared-memory format, locked by `src/shared_layout.rs`).
const HEAD_OFFSET: usize = 128;
/// Commit-word bits of the record format (`src/message_ring.rs`, module docs).
const PUBLISHED: u32 = 1;
const PADDING: u32 = 2;

/// Writes raw bytes of a ring being prepared in `region`, before any handle views it.
struct RawRing<const C: usize, const L: usize = 1> {
    base: NonNull<u8>,
    len: usize,
}

impl<const C: usize, const L: usize> RawRing<C, L> {
    /// Initialises an empty ring in `region` and keeps only its address: no reference to the
    /// ring exists until [`attach`](Self::attach).
    fn init(region: &mut Region) -> Self {
        let len = region.len();
        let base = region.base();
        // SAFETY: `region` is valid, exclusively borrowed memory of `len` bytes; the returned
        // reference is dropped at once.
        unsafe { MessageRing::<C, L>::init_in_place(base, len) }.expect("region fits the ring");
        Self { base, len }
    }

    fn write_u32(&mut self, offset: usize, value: u32) {
        assert!(offset.is_multiple_of(4) && offset + 4 <= mem::size_of::<MessageRing<C, L>>());
        // SAFETY: in bounds of the ring (checked above) and 4-aligned in a 128-aligned region;
        // no handle or reference views the ring while it is prepared.
        unsafe { self.base.as_ptr().add(offset).cast::<u32>().write(value) }
    }

    /// Sets the consumer's index of lane 0 (and so the position every handle starts from).
    fn set_head(&mut self, head: u32) {
        self.set_lane_head(0, head);
    }

    /// Sets a lane's consumer index word (position, and pop parity in bit 0 with lanes).
    fn set_lane_head(&mut self, lane: usize, word: u32) {
        assert!(lane < L);
        self.write_u32(HEAD_OFFSET + 4 * lane, word);
    }

    /// Writes a record header at buffer offset `at`.
    fn header(&mut self, at: u32, commit: u32, len: u32) {
        let data = MessageRing::<C, L>::LAYOUT.data_offset as usize + at as usize;
        self.write_u32(data, commit);
        self.write_u32(data + 4, len);
    }

    /// Views the prepared ring; the region stays borrowed by the caller for its lifetime.
    fn attach<'r>(&self) -> Result<&'r MessageRing<C, L>, AttachError> {
        // SAFETY: the region outlives the reference (the callers keep it alive for the test) and
        // is accessed only through the ring from now on.
        unsafe { MessageRing::<C, L>::attach(self.base, self.len) }
    }
}

/// The consumer index of an attached ring, for simulating a peer that writes it at runtime.
fn head_word<const C: usize>(ring: &MessageRing<C>) -> &AtomicU32 {
    let ring: *const MessageRing<C> = ring;
    // SAFETY: the word at `HEAD_OFFSET` is the ring's `AtomicU32` consumer index (fixed layout),
    // aligned and alive as long as the ring; atomics may be shared.
    unsafe { &*ring.cast::<u8>().add(HEAD_OFFSET).cast::<AtomicU32>() }
}

fn pattern(seq: u32, len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (seq.wrapping_mul(131).wrapping_add(i.wrapping_mul(7)) >> 1) as u8)
        .collect()
}

#[test]
fn a_message_of_every_size_round_trips() {
    let mut ring = MessageRing::<256>::new();
    let (mut tx, mut rx) = ring.split();
    let max = MessageRing::<256>::MAX_PAYLOAD;
    assert_eq!(tx.max_payload(), max);
    for len in 0..=max {
        let payload = pattern(len, len);
        tx.send(len as u16, &payload).unwrap();
        let message = rx.front().unwrap();
        assert_eq!(message.tag(), len as u16);
        assert_eq!(message.payload(), &payload[..]);
        assert_eq!(message.payload().as_ptr() as usize % 8, 0);
        rx.pop().unwrap();
    }
    assert_eq!(
        tx.send(0, &vec![0; max as usize + 1]),
        Err(SendError::TooLarge {
            len: u64::from(max) + 1,
            max
        })
    );
}

#[test]
fn errors_display_their_cause() {
    for text in [
        SendError::Full.to_string(),
        SendError::TooLarge { len: 9, max: 8 }.to_string(),
        SendError::Corrupt { reason: "xyz" }.to_string(),
        RecvError::Empty.to_string(),
        RecvError::Corrupt { reason: "xyz" }.to_string(),
        ClaimError::Corrupt { reason: "xyz" }.to_string(),
        AttachError::Corrupt { reason: "xyz" }.to_string(),
    ] {
        assert!(!text.is_empty());
    }
    assert!(RecvError::Corrupt { reason: "xyz" }
        .to_string()
        .contains("xyz"));
    assert!(SendError::TooLarge { len: 9, max: 8 }
        .to_string()
        .contains('9'));
}

#[test]
fn take_over_keeps_pushed_messages_and_discards_an_unpushed_one() {
    let ring = MessageRing::<256>::new();
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    let mut tx = ring.claim_producer(owner(7)).unwrap();
    tx.send(1, b"one").unwrap();
    tx.send(2, b"two").unwrap();
    let mut slot = tx.alloc(40, 3).unwrap();
    slot.payload_mut().fill(0xEE);
    // The producer "dies" with the slot written but not pushed (the slot's borrow ends here).
    mem::forget(tx);
    assert_eq!(
        ring.claim_producer(owner(8)).unwrap_err(),
        ClaimError::Taken { owner: 7 }
    );
    // SAFETY: owner 9 does not hold the side, so this must fail without creating a handle.
    let wrong = unsafe { ring.take_over_producer(owner(9), owner(8)) };
    assert!(matches!(wrong, Err(ClaimError::Taken { owner: 7 })));
    // SAFETY: the forgotten producer of owner 7 is never used again.
    let mut tx = unsafe { ring.take_over_producer(owner(7), owner(8)) }.unwrap();
    tx.send(4, b"four").unwrap();
    assert_eq!(
        rx.recv_with(|m| (m.tag(), m.payload().to_vec())),
        Ok((1, b"one".to_vec()))
    );
    // The consumer reads the front and "dies" before popping it.
    assert_eq!(rx.front().unwrap().tag(), 2);
    mem::forget(rx);
    // SAFETY: the forgotten consumer of owner 2 is never used again.
    let mut rx = unsafe { ring.take_over_consumer(owner(2), owner(5)) }.unwrap();
    assert_eq!(ring.holders(), (8, 5));
    assert_eq!(
        rx.recv_with(|m| (m.tag(), m.payload().to_vec())),
        Ok((2, b"two".to_vec()))
    );
    assert_eq!(
        rx.recv_with(|m| (m.tag(), m.payload().to_vec())),
        Ok((4, b"four".to_vec()))
    );
    assert_eq!(rx.front().unwrap_err(), RecvError::Empty);
    drop(tx);
    assert_eq!(ring.holders(), (0, 5));
}

#[test]
fn claims_are_exclusive_and_released_on_drop() {
    let ring = MessageRing::<128>::new();
    let tx = ring.claim_producer(owner(3)).unwrap();
    assert_eq!(
        ring.claim_producer(owner(4)).unwrap_err(),
        ClaimError::Taken { owner: 3 }
    );
    let rx = ring.claim_consumer(owner(5)).unwrap();
    assert_eq!(
        ring.claim_consumer(owner(4)).unwrap_err(),
        ClaimError::Taken { owner: 5 }
    );
    drop((tx, rx));
    assert_eq!(ring.holders(), (0, 0));
}

/// Sends and receives across the wrap of the `u32` positions, with records of every size class
/// so that padding records straddle it too.
#[test]
fn positions_wrap_past_u32_max() {
    for start in [u32::MAX - 7, u32::MAX - 127, u32::MAX - 1000 + 1] {
        let start = start & !7;
        let mut region = region_for::<256>();
        let mut raw = RawRing::<256>::init(&mut region);
        raw.set_head(start);
        let ring = raw.attach().unwrap();
        let mut tx = ring.claim_producer(owner(1)).unwrap();
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        assert_eq!(tx.queued_bytes(), 0);
        assert_eq!(rx.front().unwrap_err(), RecvError::Empty);
        let mut queue = VecDeque::new();
        let mut seq = 0u32;
        for round in 0..60u32 {
            let len = (round * 37) % (MessageRing::<256>::MAX_PAYLOAD + 1);
            match tx.send(seq as u16, &pattern(seq, len)) {
                Ok(()) => {
                    queue.push_back((seq, len));
                    seq += 1;
                }
                Err(SendError::Full) => assert!(!queue.is_empty(), "an empty ring took it"),
                Err(error) => panic!("{error}"),
            }
            if !round.is_multiple_of(3) {
                if let Some((seq, len)) = queue.pop_front() {
                    let message = rx.front().unwrap();
                    assert_eq!(message.tag(), seq as u16);
                    assert_eq!(message.payload(), &pattern(seq, len)[..]);
                    rx.pop().unwrap();
                }
            }
            if round % 7 == 6 {
                drop(tx);
                tx = ring.claim_producer(owner(3)).unwrap();
            }
        }
        while let Some((seq, len)) = queue.pop_front() {
            assert_eq!(
                rx.recv_with(|m| (m.tag(), m.payload().to_vec())),
                Ok((seq as u16, pattern(seq, len)))
            );
        }
        assert!(
            head_word(ring).load(Ordering::Relaxed) < start,
            "start {start}: the consumer's index wrapped"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Corrupt records: a peer (another process) can write anything into the shared buffer. The
// handles must report it, never read out of bounds.

/// Checks that a consumer's `front` and a new producer's claim both reject the ring.
fn assert_rejected<const C: usize>(ring: &MessageRing<C>, what: &str) {
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    let error = rx.front().unwrap_err();
    assert!(
        matches!(error, RecvError::Corrupt { reason } if !reason.is_empty()),
        "{what}: front gave {error:?}"
    );
    assert!(matches!(rx.pop(), Err(RecvError::Corrupt { .. })), "{what}");
    assert!(!rx.is_empty(), "{what}: a corrupt ring is not empty");
    let error = ring.claim_producer(owner(1)).unwrap_err();
    assert!(
        matches!(error, ClaimError::Corrupt { reason } if !reason.is_empty()),
        "{what}: claim_producer gave {error:?}"
    );
    assert!(error.to_string().contains("corrupt"), "{error}");
    assert_eq!(ring.holders().0, 0, "{what}: a failed claim is released");
}

fn corrupt_at_start<const C: usize>(commit: u32, len: u32, what: &str) {
    let mut region = region_for::<C>();
    let mut raw = RawRing::<C>::init(&mut region);
    raw.header(0, commit, len);
    let ring = raw
        .attach()
        .expect("records are checked lazily, not by attach");
    assert_rejected(ring, what);
}

/// The bad record sits after a valid one, so it is found by the producer's walk and after a pop.
fn corrupt_after_a_message<const C: usize>(commit: u32, len: u32, at: u32, what: &str) {
    let mut region = region_for::<C>();
    let mut raw = RawRing::<C>::init(&mut region);
    raw.header(0, PUBLISHED | (7 << 16), at - 8);
    raw.header(at, commit, len);
    let ring = raw.attach().unwrap();
    assert!(
        matches!(
            ring.claim_producer(owner(1)),
            Err(ClaimError::Corrupt { .. })
        ),
        "{what}: the producer's walk passes the valid record and finds the bad one"
    );
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    let message = rx.front().unwrap();
    assert_eq!(
        (message.tag(), message.len()),
        (7, at as usize - 8),
        "{what}"
    );
    rx.pop().unwrap();
    assert!(
        matches!(rx.front(), Err(RecvError::Corrupt { .. })),
        "{what}"
    );
}

fn corrupt_records<const C: usize>() {
    let max = MessageRing::<C>::MAX_PAYLOAD;
    let c = C as u32;
    // Unknown flag bits, with and without the published bit; a tag without the published bit.
    for commit in [
        PUBLISHED | 4,
        PUBLISHED | 0x8000,
        PUBLISHED | PADDING | 0x100,
        4,
        1 << 16,
    ] {
        corrupt_at_start::<C>(commit, 8, &format!("commit word {commit:#x}"));
        corrupt_after_a_message::<C>(commit, 8, 16, &format!("commit word {commit:#x} later"));
    }
    // Padding at offset 0 (it would have to cover the whole buffer).
    corrupt_at_start::<C>(PUBLISHED | PADDING, c - 8, "padding at offset 0");
    // Padding that does not end at the end of the buffer.
    for len in [0, 8, c - 32, c - 16, c, u32::MAX] {
        corrupt_after_a_message::<C>(PUBLISHED | PADDING, len, 16, &format!("padding len {len}"));
    }
    // A length beyond the largest payload, even where it would fit the buffer.
    for len in [max + 1, max + 8, c - 8, u32::MAX] {
        corrupt_at_start::<C>(PUBLISHED, len, &format!("message len {len}"));
    }
    // A length within the largest payload that runs past the end of the buffer.
    let mut region = region_for::<C>();
    let mut raw = RawRing::<C>::init(&mut region);
    raw.set_head(c - 16);
    raw.header(c - 16, PUBLISHED, 9);
    assert_rejected(
        raw.attach().unwrap(),
        "record of 24 bytes 16 bytes before the end",
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

/// Published records that claim more than the buffer holds: each valid on its own.
#[test]
fn records_that_overrun_the_buffer_are_reported_by_the_producer_walk() {
    let mut region = region_for::<128>();
    let mut raw = RawRing::<128>::init(&mut region);
    // Records cover the whole buffer and loop back to the start: a producer walking them would
    // go round forever without the overrun check.
    for at in (0..128).step_by(32) {
        raw.header(at, PUBLISHED, 24);
    }
    let ring = raw.attach().unwrap();
    assert!(matches!(
        ring.claim_producer(owner(1)),
        Err(ClaimError::Corrupt { .. })
    ));
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    for _ in 0..8 {
        assert_eq!(rx.front().unwrap().len(), 24);
        rx.pop().unwrap();
    }
}

#[test]
fn a_misaligned_consumer_index_is_refused() {
    for head in [4, 1, 7, u32::MAX] {
        let mut region = region_for::<256>();
        let mut raw = RawRing::<256>::init(&mut region);
        raw.set_head(head);
        let error = raw.attach().unwrap_err();
        assert!(
            matches!(error, AttachError::Corrupt { reason } if !reason.is_empty()),
            "head {head}: {error:?}"
        );
        assert!(error.to_string().contains("corrupt"), "{error}");
    }
    // The same index written after attaching (by a peer, at runtime).
    let mut region = region_for::<256>();
    let raw = RawRing::<256>::init(&mut region);
    let ring = raw.attach().unwrap();
    head_word(ring).store(12, Ordering::Release);
    assert!(matches!(
        ring.claim_consumer(owner(2)),
        Err(ClaimError::Corrupt { .. })
    ));
    assert!(matches!(
        ring.claim_producer(owner(1)),
        Err(ClaimError::Corrupt { .. })
    ));
    assert_eq!(ring.holders(), (0, 0), "failed claims are released");
}

/// With lanes, consecutive messages sit in consecutive lanes (never on one cache line), each
/// lane packs its own records, and order is kept.
#[test]
fn lanes_put_consecutive_messages_in_consecutive_lanes() {
    const C: usize = 4096;
    const L: usize = 16;
    const LANE: usize = C / L;
    let mut ring = Box::new(MessageRing::<C, L>::new());
    let base = ring.as_ref() as *const MessageRing<C, L> as usize
        + MessageRing::<C, L>::LAYOUT.data_offset as usize;
    let (mut tx, mut rx) = ring.split();
    let mut places = Vec::new();
    for seq in 0..2 * L as u32 {
        let mut slot = tx.alloc(64, seq as u16).unwrap();
        let payload = slot.payload_mut();
        places.push(payload.as_ptr() as usize - base);
        payload.copy_from_slice(&pattern(seq, 64));
        slot.push();
    }
    for (seq, &place) in places.iter().enumerate() {
        // Record = 8-byte header + 64; the payload follows the header.
        let record = place - 8;
        assert_eq!(
            record / LANE,
            seq % L,
            "message {seq} in lane {}",
            record / LANE
        );
        assert_eq!(
            record % LANE,
            (seq / L) * 72,
            "message {seq} packed in its lane"
        );
        if seq > 0 {
            assert_ne!(
                place / 64,
                places[seq - 1] / 64,
                "messages {seq} and before share a line"
            );
        }
    }
    for seq in 0..2 * L as u32 {
        assert_eq!(
            rx.recv_with(|m| (m.tag(), m.payload().to_vec())),
            Ok((seq as u16, pattern(seq, 64)))
        );
    }
    assert_eq!(tx.position(), rx.position());
    assert_eq!(tx.position(), 2 * L as u32 * 72);
}

/// Handles that die mid-round are replaced by take-overs that continue in the right lanes: the
/// consumer from its pop parities, the producer from those plus the messages still queued.
#[test]
fn take_overs_continue_the_round_of_lanes() {
    let ring = MessageRing::<1024, 4>::new();
    let mut tx = ring.claim_producer(owner(1)).unwrap();
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    let mut next_sent = 0u32;
    let mut next_received = 0u32;
    for round in 0..40u32 {
        // Sends 0–3 and receives 0–3 messages per round, so both sides stop in every lane.
        for _ in 0..round % 4 {
            let len = (next_sent * 13) % 40;
            tx.send(next_sent as u16, &pattern(next_sent, len)).unwrap();
            next_sent += 1;
        }
        for _ in 0..(round * 7) % 4 {
            if next_received == next_sent {
                break;
            }
            let len = (next_received * 13) % 40;
            assert_eq!(
                rx.recv_with(|m| (m.tag(), m.payload().to_vec())),
                Ok((next_received as u16, pattern(next_received, len)))
            );
            next_received += 1;
        }
        let producer_id = tx.position() | 1;
        mem::forget(tx);
        // SAFETY: the forgotten producer (owner 1 or a previous round's id) is never used again.
        tx = unsafe { ring.take_over_producer(owner(ring.holders().0), owner(producer_id)) }
            .unwrap();
        if round % 3 == 0 {
            drop(rx);
            rx = ring.claim_consumer(owner(2)).unwrap();
        }
    }
    while next_received < next_sent {
        let len = (next_received * 13) % 40;
        assert_eq!(
            rx.recv_with(|m| (m.tag(), m.payload().to_vec())),
            Ok((next_received as u16, pattern(next_received, len)))
        );
        next_received += 1;
    }
    assert_eq!(rx.front().unwrap_err(), RecvError::Empty);
}

/// Pop parities that change more than once cannot come from a round of lanes: both sides refuse
/// them. A lane index that is not a position plus a parity bit is refused on attach.
#[test]
fn lane_indices_out_of_round_robin_order_are_refused() {
    for parities in [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 1]] {
        let mut region = region_for::<1024>();
        let mut raw = RawRing::<1024, 4>::init(&mut region);
        for (lane, parity) in parities.into_iter().enumerate() {
            raw.set_lane_head(lane, (64 * lane as u32) | parity);
        }
        let ring = raw.attach().unwrap();
        for error in [
            ring.claim_consumer(owner(2)).map(drop).unwrap_err(),
            ring.claim_producer(owner(1)).map(drop).unwrap_err(),
        ] {
            assert!(
                matches!(error, ClaimError::Corrupt { reason } if reason.contains("round-robin")),
                "{parities:?}: {error:?}"
            );
        }
        assert_eq!(ring.holders(), (0, 0), "failed claims are released");
    }
    // A parity pattern that changes once names the next lane: [1, 1, 0, 0] means lanes 0 and 1
    // have each seen one message more, so the next message comes from (and goes to) lane 2.
    let mut region = region_for::<1024>();
    let mut raw = RawRing::<1024, 4>::init(&mut region);
    raw.set_lane_head(0, 8 | 1);
    raw.set_lane_head(1, 16 | 1);
    let ring = raw.attach().unwrap();
    let mut tx = ring.claim_producer(owner(1)).unwrap();
    tx.send(5, b"lane two").unwrap();
    let mut slot = tx.alloc(0, 6).unwrap();
    let at = slot.payload_mut().as_ptr() as usize;
    slot.push();
    let data = ring as *const MessageRing<1024, 4> as usize
        + MessageRing::<1024, 4>::LAYOUT.data_offset as usize;
    assert_eq!(
        (at - data - 8) / 256,
        3,
        "the message after lane 2's goes to lane 3"
    );
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    assert_eq!(
        rx.recv_with(|m| m.payload().to_vec()),
        Ok(b"lane two".to_vec())
    );
    assert_eq!(rx.recv_with(|m| m.tag()), Ok(6));
    for word in [4, 2, 6] {
        let mut region = region_for::<1024>();
        let mut raw = RawRing::<1024, 4>::init(&mut region);
        raw.set_lane_head(3, word);
        assert!(
            matches!(raw.attach(), Err(AttachError::Corrupt { .. })),
            "lane index {word}"
        );
    }
}

/// A consumer index the peer publishes while the producer runs: the producer must refuse to
/// believe it rather than overwrite unread records or count negative room.
#[test]
fn an_impossible_consumer_index_at_runtime_is_a_send_error() {
    for bad_head in [4u32, 1000, 0u32.wrapping_sub(512)] {
        let mut region = region_for::<128>();
        let raw = RawRing::<128>::init(&mut region);
        let ring = raw.attach().unwrap();
        let mut tx = ring.claim_producer(owner(1)).unwrap();
        // Fill the ring so the producer must reload the consumer's index.
        let mut sent = 0;
        while tx.send(0, &[1; 16]).is_ok() {
            sent += 1;
        }
        assert!(sent > 0);
        head_word(ring).store(bad_head, Ordering::Release);
        let error = tx.send(0, &[1; 16]).unwrap_err();
        assert!(
            matches!(error, SendError::Corrupt { .. }),
            "head {bad_head}: {error:?}"
        );
        // A sender waiting for room asks `has_room`, which reads the same index.
        assert!(
            matches!(tx.has_room(16), Err(SendError::Corrupt { .. })),
            "has_room, head {bad_head}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Property test against an exact model of the record layout.

#[derive(Clone, Debug)]
enum Op {
    /// alloc(len, tag), fill the payload, push.
    Send(u32, u16),
    /// alloc(len, tag), then drop the slot unpublished.
    AllocDrop(u32, u16),
    Front,
    Pop,
    IsEmpty,
    ReclaimProducer,
    ReclaimConsumer,
}

fn op(max: u32) -> impl Strategy<Value = Op> {
    // Lengths around the interesting edges: tiny, anything, the largest, just too large.
    let len = prop_oneof![
        3 => 0..=16u32,
        3 => 0..=max,
        1 => max - 8..=max + 8,
        1 => Just(u32::MAX),
    ];
    prop_oneof![
        6 => (len.clone(), any::<u16>()).prop_map(|(len, tag)| Op::Send(len, tag)),
        1 => (len, any::<u16>()).prop_map(|(len, tag)| Op::AllocDrop(len, tag)),
        2 => Just(Op::Front),
        4 => Just(Op::Pop),
        1 => Just(Op::IsEmpty),
        1 => Just(Op::ReclaimProducer),
        1 => Just(Op::ReclaimConsumer),
    ]
}

enum Record {
    Padding(u32),
    Message(u16, Vec<u8>),
}

/// Where every byte goes, as the module docs of `message_ring.rs` specify: 8-byte headers,
/// payloads rounded up to 8, a padding record instead of wrapping past a lane's end, 8 bytes
/// reserved past the newest record of a lane for the zeroed commit word, and message `k` in lane
/// `k % L`.
struct Model<const C: usize, const L: usize> {
    heads: [u32; L],
    tails: [u32; L],
    lanes: [VecDeque<Record>; L],
    /// The lanes the next message goes to and comes from.
    producer_lane: usize,
    consumer_lane: usize,
}

impl<const C: usize, const L: usize> Model<C, L> {
    const LANE: u32 = (C / L) as u32;

    fn new(starts: [u32; L]) -> Self {
        Self {
            heads: starts,
            tails: starts,
            lanes: std::array::from_fn(|_| VecDeque::new()),
            producer_lane: 0,
            consumer_lane: 0,
        }
    }

    fn record_size(len: u32) -> u32 {
        8 + len.div_ceil(8) * 8
    }

    fn room_for(&self, lane: usize, end: u32) -> bool {
        end.wrapping_sub(self.heads[lane]) <= Self::LANE
    }

    /// The outcome `alloc` must have; publishes the padding record `alloc` publishes.
    fn alloc(&mut self, len: u32) -> Result<(), SendError> {
        let max = MessageRing::<C, L>::MAX_PAYLOAD;
        if len > max {
            return Err(SendError::TooLarge {
                len: u64::from(len),
                max,
            });
        }
        let lane = self.producer_lane;
        let size = Self::record_size(len);
        let offset = self.tails[lane] % Self::LANE;
        if offset + size > Self::LANE {
            let pad = Self::LANE - offset;
            if !self.room_for(lane, self.tails[lane].wrapping_add(pad + 8)) {
                return Err(SendError::Full);
            }
            self.lanes[lane].push_back(Record::Padding(pad));
            self.tails[lane] = self.tails[lane].wrapping_add(pad);
        }
        if !self.room_for(lane, self.tails[lane].wrapping_add(size + 8)) {
            return Err(SendError::Full);
        }
        Ok(())
    }

    fn push(&mut self, tag: u16, payload: Vec<u8>) {
        let lane = self.producer_lane;
        self.tails[lane] = self.tails[lane].wrapping_add(Self::record_size(payload.len() as u32));
        self.lanes[lane].push_back(Record::Message(tag, payload));
        self.producer_lane = (lane + 1) % L;
    }

    /// What the consumer does on `front`: skips padding in its lane, returns the oldest message.
    fn front(&mut self) -> Option<(u16, &[u8])> {
        let lane = self.consumer_lane;
        while let Some(Record::Padding(size)) = self.lanes[lane].front() {
            self.heads[lane] = self.heads[lane].wrapping_add(*size);
            self.lanes[lane].pop_front();
        }
        match self.lanes[lane].front() {
            Some(Record::Message(tag, payload)) => Some((*tag, payload)),
            _ => None,
        }
    }

    fn pop(&mut self) -> bool {
        if self.front().is_none() {
            return false;
        }
        let lane = self.consumer_lane;
        if let Some(Record::Message(_, payload)) = self.lanes[lane].pop_front() {
            self.heads[lane] =
                self.heads[lane].wrapping_add(Self::record_size(payload.len() as u32));
        }
        self.consumer_lane = (lane + 1) % L;
        true
    }

    fn has_messages(&self) -> bool {
        self.lanes
            .iter()
            .flatten()
            .any(|record| matches!(record, Record::Message(..)))
    }

    fn queued(&self) -> u32 {
        (0..L)
            .map(|lane| self.tails[lane].wrapping_sub(self.heads[lane]))
            .sum()
    }
}

/// Runs `ops` on a ring whose lanes start at positions near `start` (each lane a little further
/// on, so their paddings fall at different times), checking every outcome against the model.
fn run_model<const C: usize, const L: usize>(start: u32, ops: &[Op]) -> Result<(), TestCaseError> {
    let starts: [u32; L] = std::array::from_fn(|lane| start.wrapping_add(40 * lane as u32) & !7);
    let mut region = region_for::<C>();
    let mut raw = RawRing::<C, L>::init(&mut region);
    for (lane, &position) in starts.iter().enumerate() {
        raw.set_lane_head(lane, position);
    }
    let ring = raw.attach().unwrap();
    let mut ids = 10..;
    let mut tx = ring.claim_producer(owner(ids.next().unwrap())).unwrap();
    let mut rx = ring.claim_consumer(owner(ids.next().unwrap())).unwrap();
    let mut model = Model::<C, L>::new(starts);
    let mut seq = 0u32;
    for op in ops {
        match *op {
            Op::Send(len, tag) | Op::AllocDrop(len, tag) => {
                let had_messages = model.has_messages();
                let room = tx.has_room(len).unwrap();
                let expected = model.alloc(len);
                prop_assert_eq!(
                    room,
                    expected.is_ok(),
                    "has_room({}) disagrees with alloc",
                    len
                );
                match tx.alloc(len, tag) {
                    Ok(mut slot) => {
                        prop_assert_eq!(expected, Ok(()), "alloc({}) succeeded", len);
                        prop_assert_eq!(slot.tag(), tag);
                        let payload = slot.payload_mut();
                        prop_assert_eq!(payload.len(), len as usize);
                        prop_assert_eq!(payload.as_ptr() as usize % 8, 0);
                        if matches!(op, Op::Send(..)) {
                            let bytes = pattern(seq, len);
                            payload.copy_from_slice(&bytes);
                            slot.push();
                            model.push(tag, bytes);
                            seq += 1;
                        } else {
                            // A dropped slot's bytes stay behind: make every word of them look
                            // like a published empty message, so a successor word the producer
                            // wrongly takes for zeroed shows up as a phantom message.
                            let phantom = [(1u32 | 0xBEEF << 16).to_le_bytes(), [0; 4]].concat();
                            for (byte, &value) in payload.iter_mut().zip(phantom.iter().cycle()) {
                                *byte = value;
                            }
                        }
                    }
                    Err(error) => {
                        prop_assert_eq!(Err(error), expected, "alloc({}) failed", len);
                        prop_assert!(
                            error != SendError::Full || had_messages,
                            "Full with no message queued"
                        );
                        prop_assert_eq!(
                            matches!(error, SendError::TooLarge { .. }),
                            len > MessageRing::<C, L>::MAX_PAYLOAD
                        );
                    }
                }
            }
            Op::Front => {
                let expected = model.front().map(|(tag, bytes)| (tag, bytes.to_vec()));
                match rx.front() {
                    Ok(message) => {
                        prop_assert_eq!(
                            Some((message.tag(), message.payload().to_vec())),
                            expected
                        );
                        prop_assert_eq!(message.payload().as_ptr() as usize % 8, 0);
                    }
                    Err(error) => {
                        prop_assert_eq!(error, RecvError::Empty);
                        prop_assert_eq!(expected, None);
                    }
                }
            }
            Op::Pop => {
                let expected = if model.pop() {
                    Ok(())
                } else {
                    Err(RecvError::Empty)
                };
                prop_assert_eq!(rx.pop(), expected);
            }
            Op::IsEmpty => prop_assert_eq!(rx.is_empty(), model.front().is_none()),
            Op::ReclaimProducer => {
                drop(tx);
                prop_assert_eq!(ring.holders().0, 0);
                tx = ring.claim_producer(owner(ids.next().unwrap())).unwrap();
            }
            Op::ReclaimConsumer => {
                drop(rx);
                rx = ring.claim_consumer(owner(ids.next().unwrap())).unwrap();
            }
        }
        let queued = tx.queued_bytes();
        prop_assert_eq!(queued, model.queued());
        prop_assert!(queued <= C as u32 - 8 * L as u32);
        prop_assert_eq!(tx.position().wrapping_sub(rx.position()), queued);
    }
    while let Some((tag, bytes)) = model.front().map(|(tag, bytes)| (tag, bytes.to_vec())) {
        prop_assert_eq!(
            rx.recv_with(|m| (m.tag(), m.payload().to_vec())),
            Ok((tag, bytes))
        );
        model.pop();
    }
    prop_assert_eq!(rx.front().unwrap_err(), RecvError::Empty);
    prop_assert_eq!(tx.queued_bytes(), 0);
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
    fn matches_the_model_128(
        start in start_position(),
        ops in prop::collection::vec(op(MessageRing::<128>::MAX_PAYLOAD), ops_len()),
    ) {
        run_model::<128, 1>(start, &ops)?;
    }

    #[test]
    fn matches_the_model_1024(
        start in start_position(),
        ops in prop::collection::vec(op(MessageRing::<1024>::MAX_PAYLOAD), ops_len()),
    ) {
        run_model::<1024, 1>(start, &ops)?;
    }

    #[test]
    fn matches_the_model_1024_in_4_lanes(
        start in start_position(),
        ops in prop::collection::vec(op(MessageRing::<1024, 4>::MAX_PAYLOAD), ops_len()),
    ) {
        run_model::<1024, 4>(start, &ops)?;
    }

    #[test]
    fn matches_the_model_1024_in_16_lanes(
        start in start_position(),
        ops in prop::collection::vec(op(MessageRing::<1024, 16>::MAX_PAYLOAD), ops_len()),
    ) {
        run_model::<1024, 16>(start, &ops)?;
    }
}
