//! Arbitrary sequences of sends and receives on a `MessageRing` through the `MessageSender` /
//! `MessageReceiver` traits, checked against a model of the ring's lanes: one lane of 256 bytes,
//! 4 lanes of 128 or 16 lanes of 64, chosen by a byte of the input.
//!
//! The model keeps, per lane, the consumer's and the producer's byte positions and the records
//! between them (padding included), so it predicts exactly when `alloc` must say `Full`, what
//! `has_room`, `queued_bytes` and `position` return, and which message every receive yields.
//! On top of that the API's own promises are checked independently of the model: an empty ring
//! is never full, a set of messages within the conformance suite's in-flight rule
//! (`fits_in_flight`) always fits, `TooLarge` happens exactly when `len > MAX_PAYLOAD`, and the
//! messages come out in the order they went in. Handles are dropped, re-claimed and taken over
//! at arbitrary points; each new one must continue in the right lane at the right position. The
//! ring starts at arbitrary (8-aligned) positions, different in every lane, so the byte
//! counters wrap within a run, and with several lanes at an arbitrary lane (the pop parities of
//! the lanes before it flipped, as if they had seen one message more).
#![no_main]

use std::collections::VecDeque;
use std::num::NonZeroU32;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use spsc_core::{
    ClaimError, MessageReceiver, MessageRing, MessageSender, RecvError, SendError, SendSlot,
};

/// Offset of the consumer's index words in a ring (locked by the crate's layout assertions).
const HEADS: usize = 128;
const HEADER: u32 = 8;

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    /// `alloc(len % (2 * lane bytes), tag)`, fill the payload, then push it or drop the slot.
    Alloc {
        len: u16,
        tag: u16,
        push: bool,
    },
    /// `send` of a payload of `len % (2 * lane bytes)` bytes.
    Send {
        len: u16,
        tag: u16,
    },
    Front,
    Pop,
    RecvWith,
    IsEmpty,
    QueuedBytes,
    DropProducer,
    ClaimProducer,
    ForgetAndTakeOverProducer,
    DropConsumer,
    ClaimConsumer,
    ForgetAndTakeOverConsumer,
    /// `has_room(len % (2 * lane bytes))`.
    HasRoom {
        len: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Consumer index lane 0 starts at, rounded down to 8; the other lanes start elsewhere.
    start: u32,
    owner: NonZeroU32,
    /// The ring: `MessageRing<256>`, `<512, 4>` or `<1024, 16>` (`shape % 3`).
    shape: u8,
    /// With several lanes, the lane the first message goes to (`first_lane % L`); bit 7 flips
    /// every lane's initial pop parity.
    first_lane: u8,
    ops: Vec<Op>,
}

type Queued = (u16, Vec<u8>);

/// Payload bytes of message `seq`, so every byte received can be checked.
fn payload(seq: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq.wrapping_mul(131) as usize).wrapping_add(i * 7) as u8)
        .collect()
}

const fn record_size(len: u32) -> u32 {
    HEADER + len.next_multiple_of(8)
}

/// One lane of the model: its consumer and producer positions, and the records between them
/// (`None` for padding).
#[derive(Default)]
struct Lane {
    head: u32,
    tail: u32,
    records: VecDeque<(u32, Option<Queued>)>,
}

/// The ring as the protocol defines it (module docs of `message_ring.rs`), one lane at a time.
struct Model {
    lane_bytes: u32,
    lanes: Vec<Lane>,
    producer_lane: usize,
    consumer_lane: usize,
    /// Every queued message in the order sent, to check the lanes give them back in that order.
    order: VecDeque<Queued>,
}

impl Model {
    /// Whether the producer may own every byte of `lane` before position `end`: the record and
    /// the 8 bytes after it that keep the next commit word zero.
    fn fits(&self, lane: usize, end: u32) -> bool {
        end.wrapping_sub(self.lanes[lane].head) <= self.lane_bytes
    }

    /// Where a record of `size` bytes goes in the producer's lane: its position, and the
    /// padding to publish first (0 if none).
    fn place(&self, size: u32) -> (u32, u32) {
        let tail = self.lanes[self.producer_lane].tail;
        let offset = tail & (self.lane_bytes - 1);
        if offset + size > self.lane_bytes {
            let padding = self.lane_bytes - offset;
            (tail.wrapping_add(padding), padding)
        } else {
            (tail, 0)
        }
    }

    fn has_room(&self, len: u32) -> bool {
        let size = record_size(len);
        let (at, _) = self.place(size);
        self.fits(self.producer_lane, at.wrapping_add(size + HEADER))
    }

    /// What `alloc(len)` does to the ring: publishes padding when the record does not fit
    /// before the lane's end and the lane has room for the padding's successor header (even if
    /// the record itself then does not fit), and says whether the record fits.
    fn alloc(&mut self, len: u32) -> bool {
        let size = record_size(len);
        let lane = self.producer_lane;
        let (at, padding) = self.place(size);
        if padding != 0 {
            if !self.fits(lane, at.wrapping_add(HEADER)) {
                return false;
            }
            let lane = &mut self.lanes[lane];
            lane.records.push_back((padding, None));
            lane.tail = at;
        }
        self.fits(lane, at.wrapping_add(size + HEADER))
    }

    /// Publishes a message `alloc` made room for.
    fn push(&mut self, message: Queued) {
        let size = record_size(message.1.len() as u32);
        let lane = &mut self.lanes[self.producer_lane];
        lane.tail = lane.tail.wrapping_add(size);
        lane.records.push_back((size, Some(message.clone())));
        self.order.push_back(message);
        self.producer_lane = (self.producer_lane + 1) % self.lanes.len();
    }

    /// What the consumer's every look at its lane does first: skip published padding.
    fn skip_padding(&mut self) {
        let lane = &mut self.lanes[self.consumer_lane];
        while let Some(&(size, None)) = lane.records.front() {
            lane.records.pop_front();
            lane.head = lane.head.wrapping_add(size);
        }
    }

    fn front(&mut self) -> Option<&Queued> {
        self.skip_padding();
        let lane = &self.lanes[self.consumer_lane];
        lane.records
            .front()
            .and_then(|(_, message)| message.as_ref())
    }

    fn pop(&mut self) -> Option<Queued> {
        self.skip_padding();
        let lane = &mut self.lanes[self.consumer_lane];
        let (size, message) = lane.records.pop_front()?;
        let message = message.expect("padding was skipped");
        lane.head = lane.head.wrapping_add(size);
        self.consumer_lane = (self.consumer_lane + 1) % self.lanes.len();
        assert_eq!(
            self.order.pop_front().as_ref(),
            Some(&message),
            "model lanes out of order"
        );
        Some(message)
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Bytes of records between the consumer and the producer, padding included.
    fn queued_bytes(&self) -> u32 {
        self.lanes
            .iter()
            .map(|lane| lane.tail.wrapping_sub(lane.head))
            .sum()
    }

    fn producer_position(&self) -> u32 {
        self.lanes
            .iter()
            .fold(0, |sum, lane| sum.wrapping_add(lane.tail))
    }

    fn consumer_position(&self) -> u32 {
        self.lanes
            .iter()
            .fold(0, |sum, lane| sum.wrapping_add(lane.head))
    }

    /// The conformance suite's promise: these messages fit in flight together.
    fn fits_in_flight(&self, max: u32, extra: u32) -> bool {
        self.order
            .iter()
            .map(|(_, p)| p.len() as u64 + 16)
            .sum::<u64>()
            + u64::from(extra)
            + 16
            <= u64::from(max)
    }
}

/// Checks a failed `alloc` (or `send`) of `len` bytes; `room` is what the model's `alloc` said.
fn check_alloc_error(result: SendError, len: u32, max: u32, room: Option<bool>, model: &Model) {
    match result {
        SendError::TooLarge { len: l, max: m } => {
            assert!(len > max, "TooLarge for {len} <= MAX_PAYLOAD");
            assert_eq!((l, m), (u64::from(len), max));
            assert_eq!(room, None);
        }
        SendError::Full => {
            assert!(len <= max, "Full instead of TooLarge for {len}");
            assert!(!model.is_empty(), "an empty ring said Full for {len} bytes");
            assert!(
                !model.fits_in_flight(max, len),
                "Full for {len} bytes although the in-flight rule says it fits: {:?}",
                model.order.iter().map(|(_, p)| p.len()).collect::<Vec<_>>()
            );
            assert_eq!(room, Some(false), "Full, but the lane has room for {len}");
        }
        other => panic!("unexpected send error {other:?}"),
    }
}

/// An empty ring whose lanes stand at arbitrary positions, with lane `first` next.
fn ring_at<const C: usize, const L: usize>(
    start: u32,
    first: usize,
    flip: bool,
) -> (Box<MessageRing<C, L>>, Vec<Lane>) {
    let ring = Box::new(MessageRing::<C, L>::new());
    let raw = Box::into_raw(ring);
    let mut lanes = Vec::new();
    for lane in 0..L {
        let position = start.wrapping_add((lane as u32).wrapping_mul(0x9E37_79B8)) & !7;
        // A lane's pop parity is kept only with several lanes; the lanes before the first one
        // have seen one message more than the rest.
        let parity = u32::from(L > 1 && ((lane < first) ^ flip));
        // SAFETY: no reference to the ring exists; lane `lane`'s index word sits at
        // `HEADS + 4 * lane` (locked by the crate's layout assertions), inside the allocation.
        // An empty ring's buffer is all zero, which is a valid state at any 8-aligned position
        // and any pop parities that change at most once.
        unsafe {
            raw.cast::<u8>()
                .add(HEADS + 4 * lane)
                .cast::<u32>()
                .write(position | parity);
        }
        lanes.push(Lane {
            head: position,
            tail: position,
            records: VecDeque::new(),
        });
    }
    // SAFETY: `raw` came from `Box::into_raw` above.
    (unsafe { Box::from_raw(raw) }, lanes)
}

fn run<const C: usize, const L: usize>(input: &Input) {
    let max = MessageRing::<C, L>::MAX_PAYLOAD;
    let lane_bytes = (C / L) as u32;
    let first = usize::from(input.first_lane) % L;
    let (ring, lanes) = ring_at::<C, L>(input.start, first, input.first_lane & 0x80 != 0);
    let ring: &MessageRing<C, L> = &ring;
    let owner = input.owner;
    let other = NonZeroU32::new(owner.get().wrapping_add(1)).unwrap_or(NonZeroU32::MIN);
    let mut model = Model {
        lane_bytes,
        lanes,
        producer_lane: first,
        consumer_lane: first,
        order: VecDeque::new(),
    };
    let mut seq = 0u32;

    let mut tx = Some(ring.claim_producer(owner).expect("fresh producer claim"));
    let mut rx = Some(ring.claim_consumer(owner).expect("fresh consumer claim"));

    for op in &input.ops {
        match *op {
            Op::Alloc { len, tag, push } => {
                let Some(tx) = tx.as_mut() else { continue };
                let len = u32::from(len) % (2 * lane_bytes);
                assert_eq!(tx.max_payload(), max);
                let room = (len <= max).then(|| model.alloc(len));
                match tx.alloc(len, tag) {
                    Ok(mut slot) => {
                        assert!(len <= max, "alloc accepted {len} > MAX_PAYLOAD");
                        assert_eq!(room, Some(true), "alloc found room the lane has not");
                        assert_eq!(slot.tag(), tag);
                        let bytes = slot.payload_mut();
                        assert_eq!(bytes.len(), len as usize, "payload length");
                        assert_eq!(bytes.as_ptr() as usize % 8, 0, "payload not 8-aligned");
                        seq += 1;
                        let data = payload(seq, len as usize);
                        bytes.copy_from_slice(&data);
                        if push {
                            slot.push();
                            model.push((tag, data));
                        }
                    }
                    Err(e) => check_alloc_error(e, len, max, room, &model),
                }
            }
            Op::Send { len, tag } => {
                let Some(tx) = tx.as_mut() else { continue };
                let len = u32::from(len) % (2 * lane_bytes);
                seq += 1;
                let data = payload(seq, len as usize);
                let room = (len <= max).then(|| model.alloc(len));
                match tx.send(tag, &data) {
                    Ok(()) => {
                        assert!(len <= max, "send accepted {len} > MAX_PAYLOAD");
                        assert_eq!(room, Some(true), "send found room the lane has not");
                        model.push((tag, data));
                    }
                    Err(e) => check_alloc_error(e, len, max, room, &model),
                }
            }
            Op::HasRoom { len } => {
                let Some(tx) = tx.as_mut() else { continue };
                let len = u32::from(len) % (2 * lane_bytes);
                let want = len <= max && model.has_room(len);
                assert_eq!(tx.has_room(len), Ok(want), "has_room({len})");
                if model.is_empty() && len <= max {
                    assert!(want, "an empty ring has no room for {len} bytes");
                }
            }
            Op::Front => {
                let Some(rx) = rx.as_mut() else { continue };
                let first = rx.front().map(|m| (m.tag(), m.payload().to_vec()));
                match model.front() {
                    Some(want) => {
                        assert_eq!(first.as_ref().ok(), Some(want), "front");
                        let m = rx.front().expect("second front");
                        assert_eq!(m.payload().as_ptr() as usize % 8, 0, "payload not aligned");
                        assert_eq!((m.tag(), m.payload()), (want.0, &want.1[..]), "front again");
                    }
                    None => assert_eq!(first, Err(RecvError::Empty), "front of empty"),
                }
            }
            Op::Pop => {
                let Some(rx) = rx.as_mut() else { continue };
                match model.pop() {
                    Some(_) => assert_eq!(rx.pop(), Ok(()), "pop"),
                    None => assert_eq!(rx.pop(), Err(RecvError::Empty), "pop of empty"),
                }
            }
            Op::RecvWith => {
                let Some(rx) = rx.as_mut() else { continue };
                let got = rx.recv_with(|m| (m.tag(), m.payload().to_vec()));
                match model.pop() {
                    Some(want) => assert_eq!(got, Ok(want), "recv_with"),
                    None => assert_eq!(got, Err(RecvError::Empty), "recv_with of empty"),
                }
            }
            Op::IsEmpty => {
                let Some(rx) = rx.as_mut() else { continue };
                assert_eq!(rx.is_empty(), model.front().is_none(), "is_empty");
                assert_eq!(model.front().is_none(), model.is_empty());
                assert_eq!(rx.capacity(), C);
                assert_eq!(
                    rx.position(),
                    model.consumer_position(),
                    "consumer position"
                );
            }
            Op::QueuedBytes => {
                let Some(tx) = tx.as_mut() else { continue };
                let queued = tx.queued_bytes();
                assert_eq!(queued, model.queued_bytes(), "queued_bytes");
                assert_eq!(tx.queued_bytes_cached(), queued, "cached after a reload");
                let records: u32 = model
                    .order
                    .iter()
                    .map(|(_, p)| record_size(p.len() as u32))
                    .sum();
                assert!(queued <= C as u32, "queued_bytes {queued} > capacity");
                assert!(
                    queued >= records,
                    "queued_bytes {queued} < the {records} bytes of queued records"
                );
                if model.is_empty() {
                    // Nothing queued but, at most, a padding record per lane that the consumer
                    // has not skipped, each shorter than a record can be.
                    assert!(
                        queued < C as u32 / 2,
                        "empty ring reports {queued} queued bytes"
                    );
                }
                assert_eq!(
                    tx.position(),
                    model.producer_position(),
                    "producer position"
                );
            }
            Op::DropProducer => {
                if tx.take().is_some() {
                    assert_eq!(ring.holders().0, 0);
                }
            }
            Op::ClaimProducer => match ring.claim_producer(other) {
                Ok(handle) => {
                    assert!(tx.is_none(), "two producers claimed");
                    assert_eq!(handle.position(), model.producer_position(), "re-claimed");
                    tx = Some(handle);
                }
                Err(ClaimError::Taken { owner: held }) => {
                    assert!(tx.is_some(), "claim refused on a free producer side");
                    assert_eq!(held, ring.holders().0);
                }
                Err(e) => panic!("claim_producer of a sound ring failed: {e:?}"),
            },
            Op::ForgetAndTakeOverProducer => {
                if let Some(handle) = tx.take() {
                    let dead = NonZeroU32::new(ring.holders().0).expect("held side has an owner");
                    std::mem::forget(handle);
                    // SAFETY: the forgotten handle is never used again.
                    let handle = unsafe { ring.take_over_producer(dead, owner) };
                    let handle = handle.expect("take over producer");
                    assert_eq!(handle.position(), model.producer_position(), "taken over");
                    tx = Some(handle);
                }
            }
            Op::DropConsumer => {
                if rx.take().is_some() {
                    assert_eq!(ring.holders().1, 0);
                }
            }
            Op::ClaimConsumer => match ring.claim_consumer(other) {
                Ok(handle) => {
                    assert!(rx.is_none(), "two consumers claimed");
                    assert_eq!(handle.position(), model.consumer_position(), "re-claimed");
                    rx = Some(handle);
                }
                Err(ClaimError::Taken { owner: held }) => {
                    assert!(rx.is_some(), "claim refused on a free consumer side");
                    assert_eq!(held, ring.holders().1);
                }
                Err(e) => panic!("claim_consumer of a sound ring failed: {e:?}"),
            },
            Op::ForgetAndTakeOverConsumer => {
                if let Some(handle) = rx.take() {
                    let dead = NonZeroU32::new(ring.holders().1).expect("held side has an owner");
                    std::mem::forget(handle);
                    // SAFETY: the forgotten handle is never used again.
                    let handle = unsafe { ring.take_over_consumer(dead, owner) };
                    let handle = handle.expect("take over consumer");
                    assert_eq!(handle.position(), model.consumer_position(), "taken over");
                    rx = Some(handle);
                }
            }
        }
    }

    // A fresh pair of handles sees exactly the model's messages, in order, and then continues
    // in the right lane: one more message goes through.
    drop(tx.take());
    drop(rx.take());
    let mut tx = ring
        .claim_producer(owner)
        .expect("claim producer after release");
    let mut rx = ring
        .claim_consumer(owner)
        .expect("claim consumer after release");
    while let Some(want) = model.pop() {
        let got = rx.recv_with(|m| (m.tag(), m.payload().to_vec()));
        assert_eq!(got, Ok(want), "final drain");
    }
    assert_eq!(rx.front().map(|m| m.len()), Err(RecvError::Empty));
    let last = payload(seq.wrapping_add(1), max as usize);
    tx.send(7, &last).expect("an empty ring takes MAX_PAYLOAD");
    assert_eq!(
        rx.recv_with(|m| (m.tag(), m.payload().to_vec())),
        Ok((7, last)),
        "after the final drain"
    );
}

fuzz_target!(|input: Input| {
    match input.shape % 3 {
        0 => run::<256, 1>(&input),
        1 => run::<512, 4>(&input),
        _ => run::<1024, 16>(&input),
    }
});
