//! Arbitrary sequences of sends and receives on a `MessageRing<256>` through the
//! `MessageSender` / `MessageReceiver` traits, checked against a `VecDeque<(tag, payload)>` model.
//!
//! Received messages must match the model exactly. Whether an `alloc` fits depends on padding,
//! so `Full` is checked against what the API promises instead: an empty ring is never full, a
//! set of messages within the conformance suite's in-flight rule (`fits_in_flight`) always fits,
//! and `TooLarge` happens exactly when `len > MAX_PAYLOAD`. The ring starts at an arbitrary
//! (8-aligned) position so the byte counters wrap within a run.
#![no_main]

use std::collections::VecDeque;
use std::num::NonZeroU32;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use spsc_core::{
    ClaimError, MessageReceiver, MessageRing, MessageSender, RecvError, SendError, SendSlot,
};

const C: usize = 256;
type R = MessageRing<C>;
const MAX: u32 = R::MAX_PAYLOAD;

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    /// `alloc(len % 512, tag)`, fill the payload, then push it or drop the slot.
    Alloc {
        len: u16,
        tag: u16,
        push: bool,
    },
    /// `send` of a payload of `len % 512` bytes.
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
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Consumer index the (empty) ring starts at, rounded down to 8.
    start: u32,
    owner: NonZeroU32,
    ops: Vec<Op>,
}

/// Payload bytes of message `seq`, so every byte received can be checked.
fn payload(seq: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq.wrapping_mul(131) as usize).wrapping_add(i * 7) as u8)
        .collect()
}

/// The conformance suite's promise: these messages fit in flight together.
fn fits_in_flight(model: &VecDeque<(u16, Vec<u8>)>, extra: u32) -> bool {
    model.iter().map(|(_, p)| p.len() as u64 + 16).sum::<u64>() + u64::from(extra) + 16
        <= u64::from(MAX)
}

fn check_alloc_error(result: SendError, len: u32, model: &VecDeque<(u16, Vec<u8>)>) {
    match result {
        SendError::TooLarge { len: l, max } => {
            assert!(len > MAX, "TooLarge for {len} <= MAX_PAYLOAD");
            assert_eq!((l, max), (u64::from(len), MAX));
        }
        SendError::Full => {
            assert!(len <= MAX, "Full instead of TooLarge for {len}");
            assert!(!model.is_empty(), "an empty ring said Full for {len} bytes");
            assert!(
                !fits_in_flight(model, len),
                "Full for {len} bytes although the in-flight rule says it fits: {:?}",
                model.iter().map(|(_, p)| p.len()).collect::<Vec<_>>()
            );
        }
        other => panic!("unexpected send error {other:?}"),
    }
}

fn ring_at(start: u32) -> Box<R> {
    let ring = Box::new(R::new());
    let raw = Box::into_raw(ring);
    // SAFETY: no reference to the ring exists; the consumer index sits at offset 128 (locked by
    // the crate's layout assertions). An empty ring's buffer is all zero, which is a valid state
    // at any 8-aligned position.
    unsafe {
        raw.cast::<u8>().add(128).cast::<u32>().write(start & !7);
        Box::from_raw(raw)
    }
}

fuzz_target!(|input: Input| {
    let ring = ring_at(input.start);
    let ring: &R = &ring;
    let owner = input.owner;
    let other = NonZeroU32::new(owner.get().wrapping_add(1)).unwrap_or(NonZeroU32::MIN);
    let mut model: VecDeque<(u16, Vec<u8>)> = VecDeque::new();
    let mut seq = 0u32;

    let mut tx = Some(ring.claim_producer(owner).expect("fresh producer claim"));
    let mut rx = Some(ring.claim_consumer(owner).expect("fresh consumer claim"));

    for op in &input.ops {
        match *op {
            Op::Alloc { len, tag, push } => {
                let Some(tx) = tx.as_mut() else { continue };
                let len = u32::from(len % 512);
                assert_eq!(tx.max_payload(), MAX);
                match tx.alloc(len, tag) {
                    Ok(mut slot) => {
                        assert!(len <= MAX, "alloc accepted {len} > MAX_PAYLOAD");
                        assert_eq!(slot.tag(), tag);
                        let bytes = slot.payload_mut();
                        assert_eq!(bytes.len(), len as usize, "payload length");
                        assert_eq!(bytes.as_ptr() as usize % 8, 0, "payload not 8-aligned");
                        seq += 1;
                        let data = payload(seq, len as usize);
                        bytes.copy_from_slice(&data);
                        if push {
                            slot.push();
                            model.push_back((tag, data));
                        }
                    }
                    Err(e) => check_alloc_error(e, len, &model),
                }
            }
            Op::Send { len, tag } => {
                let Some(tx) = tx.as_mut() else { continue };
                let len = u32::from(len % 512);
                seq += 1;
                let data = payload(seq, len as usize);
                match tx.send(tag, &data) {
                    Ok(()) => {
                        assert!(len <= MAX, "send accepted {len} > MAX_PAYLOAD");
                        model.push_back((tag, data));
                    }
                    Err(e) => check_alloc_error(e, len, &model),
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
                match model.pop_front() {
                    Some(_) => assert_eq!(rx.pop(), Ok(()), "pop"),
                    None => assert_eq!(rx.pop(), Err(RecvError::Empty), "pop of empty"),
                }
            }
            Op::RecvWith => {
                let Some(rx) = rx.as_mut() else { continue };
                let got = rx.recv_with(|m| (m.tag(), m.payload().to_vec()));
                match model.pop_front() {
                    Some(want) => assert_eq!(got, Ok(want), "recv_with"),
                    None => assert_eq!(got, Err(RecvError::Empty), "recv_with of empty"),
                }
            }
            Op::IsEmpty => {
                let Some(rx) = rx.as_mut() else { continue };
                assert_eq!(rx.is_empty(), model.is_empty(), "is_empty");
                assert_eq!(rx.capacity(), C);
            }
            Op::QueuedBytes => {
                let Some(tx) = tx.as_mut() else { continue };
                let queued = tx.queued_bytes();
                let records: u32 = model
                    .iter()
                    .map(|(_, p)| 8 + (p.len() as u32).next_multiple_of(8))
                    .sum();
                assert!(queued <= C as u32, "queued_bytes {queued} > capacity");
                assert!(
                    queued >= records,
                    "queued_bytes {queued} < the {records} bytes of queued records"
                );
                if rx.is_some() && model.is_empty() {
                    // Nothing queued but, at most, a padding record the consumer has not skipped.
                    assert!(
                        queued < C as u32 / 2,
                        "empty ring reports {queued} queued bytes"
                    );
                }
            }
            Op::DropProducer => {
                if tx.take().is_some() {
                    assert_eq!(ring.holders().0, 0);
                }
            }
            Op::ClaimProducer => match ring.claim_producer(other) {
                Ok(handle) => {
                    assert!(tx.is_none(), "two producers claimed");
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
                    tx = Some(handle.expect("take over producer"));
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
                    rx = Some(handle.expect("take over consumer"));
                }
            }
        }
    }

    // A fresh pair of handles sees exactly the model's messages, in order.
    drop(tx.take());
    drop(rx.take());
    let _tx = ring
        .claim_producer(owner)
        .expect("claim producer after release");
    let mut rx = ring
        .claim_consumer(owner)
        .expect("claim consumer after release");
    for want in model {
        let got = rx.recv_with(|m| (m.tag(), m.payload().to_vec()));
        assert_eq!(got, Ok(want), "final drain");
    }
    assert_eq!(rx.front().map(|m| m.len()), Err(RecvError::Empty));
});
