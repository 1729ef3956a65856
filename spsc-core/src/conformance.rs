//! The conformance suite of the message API: test bodies generic over [`MessageSender`] and
//! [`MessageReceiver`], which every transport of the workspace runs unchanged.
//!
//! Enable the `conformance` feature in a test crate and instantiate the whole suite with
//! [`conformance_suite!`](crate::conformance_suite), giving it statements that bind a fresh,
//! connected sender and receiver to two names:
//!
//! ```
//! # // Doc-tests are not `#[test]` contexts; the suite is normally expanded at module level.
//! mod message_ring_conformance {
//!     use spsc_core::MessageRing;
//!     spsc_core::conformance_suite!(tx, rx => let mut ring = Box::new(MessageRing::<1024>::new());
//!                                             let (mut tx, mut rx) = ring.split(););
//! }
//! ```
//!
//! The bodies assume only what the traits promise, and size their traffic from
//! [`MessageSender::max_payload`]:
//! - an empty transport accepts any one message of up to `max_payload` bytes at once;
//! - it accepts several messages without the receiver popping as long as their `len + 16` sum to
//!   at most `max_payload` (the [`fits_in_flight`] rule);
//! - a message becomes readable within [`DELIVERY_TIMEOUT`], so transports with delivery latency
//!   (sockets) pass the same suite as in-memory rings.

use std::time::{Duration, Instant};
use std::vec::Vec;

use crate::{MessageReceiver, MessageSender, RecvError, SendError, SendSlot};

/// How long a test body waits for a sent message to become readable before failing.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The suite's rule for how much may be in flight without the receiver popping: the lengths of
/// the messages queued, plus 16 bytes each, sum to at most `max_payload`.
pub fn fits_in_flight(max_payload: u32, in_flight: &[u32]) -> bool {
    in_flight
        .iter()
        .map(|&len| u64::from(len) + 16)
        .sum::<u64>()
        <= u64::from(max_payload)
}

/// Deterministic payload bytes for message `seq` of `len` bytes, so a receiver can verify them.
pub fn pattern(seq: u32, len: usize) -> impl Iterator<Item = u8> {
    (0..len).map(move |i| (seq as usize).wrapping_mul(31).wrapping_add(i * 7) as u8)
}

/// Sends `len` bytes of [`pattern`]`(seq)` with tag `tag`, waiting while the sender is `Full`.
///
/// # Panics
/// On any error but `Full`, or when still `Full` after [`DELIVERY_TIMEOUT`].
pub fn send_pattern<S: MessageSender>(tx: &mut S, seq: u32, len: u32, tag: u16) {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    loop {
        match tx.alloc(len, tag) {
            Ok(mut slot) => {
                for (dst, src) in slot
                    .payload_mut()
                    .iter_mut()
                    .zip(pattern(seq, len as usize))
                {
                    *dst = src;
                }
                slot.push();
                return;
            }
            Err(SendError::Full) if Instant::now() < deadline => std::thread::yield_now(),
            Err(error) => panic!("send of message {seq} ({len} bytes) failed: {error}"),
        }
    }
}

/// Waits for a message and checks it is message `seq` of `len` bytes with tag `tag`, then pops it.
///
/// # Panics
/// If none arrives within [`DELIVERY_TIMEOUT`], or it differs.
pub fn expect_pattern<R: MessageReceiver>(rx: &mut R, seq: u32, len: u32, tag: u16) {
    wait_readable(rx);
    {
        let message = rx.front().expect("front after wait");
        assert_eq!(message.tag(), tag, "tag of message {seq}");
        assert_eq!(message.len(), len as usize, "length of message {seq}");
        assert!(
            message
                .payload()
                .iter()
                .copied()
                .eq(pattern(seq, len as usize)),
            "payload of message {seq} differs"
        );
    }
    rx.pop().expect("pop of a message front returned");
}

/// Waits until `front` returns a message.
///
/// # Panics
/// On an error other than `Empty`, or after [`DELIVERY_TIMEOUT`].
pub fn wait_readable<R: MessageReceiver>(rx: &mut R) {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    loop {
        match rx.front() {
            Ok(_) => return,
            Err(RecvError::Empty) if Instant::now() < deadline => std::thread::yield_now(),
            Err(error) => panic!("no message arrived: {error}"),
        }
    }
}

/// Asserts the receiver has nothing to read now: `front` and `pop` both report `Empty`.
pub fn assert_empty<R: MessageReceiver>(rx: &mut R) {
    assert_eq!(
        rx.front().err(),
        Some(RecvError::Empty),
        "front on an empty receiver"
    );
    assert_eq!(
        rx.pop().err(),
        Some(RecvError::Empty),
        "pop on an empty receiver"
    );
}

/// A fresh transport is empty, and popping nothing is an error, not a panic.
pub fn starts_empty<S: MessageSender, R: MessageReceiver>(_tx: &mut S, rx: &mut R) {
    assert_empty(rx);
}

/// Messages arrive in order with their tags, lengths and bytes intact: one at a time over the
/// whole range of lengths, then two at a time.
pub fn fifo_order_and_tags<S: MessageSender, R: MessageReceiver>(tx: &mut S, rx: &mut R) {
    let max = tx.max_payload();
    let lens: Vec<u32> = (0..64u32).map(|i| (i * 37) % (max.min(300) + 1)).collect();
    for (seq, &len) in lens.iter().enumerate() {
        send_pattern(tx, seq as u32, len, seq as u16 ^ 0xA5A5);
        expect_pattern(rx, seq as u32, len, seq as u16 ^ 0xA5A5);
    }
    let pair_len = max.saturating_sub(32) / 2;
    assert!(fits_in_flight(max, &[pair_len, pair_len]));
    for seq in (100..140u32).step_by(2) {
        let (a, b) = (seq % (pair_len + 1), (seq * 3) % (pair_len + 1));
        send_pattern(tx, seq, a, seq as u16);
        send_pattern(tx, seq + 1, b, seq as u16 + 1);
        expect_pattern(rx, seq, a, seq as u16);
        expect_pattern(rx, seq + 1, b, seq as u16 + 1);
    }
    assert_empty(rx);
}

/// Zero-length messages are real messages: they carry their tag and occupy a place in the order.
pub fn zero_length_messages<S: MessageSender, R: MessageReceiver>(tx: &mut S, rx: &mut R) {
    assert!(
        fits_in_flight(tx.max_payload(), &[0, 1, 0]),
        "max_payload must be at least 49"
    );
    tx.send(1, &[]).expect("send empty");
    tx.send(2, b"x").expect("send one byte");
    tx.send(3, &[]).expect("send empty");
    for (tag, payload) in [(1, &b""[..]), (2, b"x"), (3, b"")] {
        wait_readable(rx);
        let message = rx.front().unwrap();
        assert_eq!((message.tag(), message.payload()), (tag, payload));
        assert!(message.is_empty() == payload.is_empty());
        rx.pop().unwrap();
    }
    assert_empty(rx);
}

/// A message of exactly `max_payload` bytes goes through; one byte more is `TooLarge` with the
/// limit in it, from `alloc` and from `send`, on an empty transport: it can never fit.
pub fn maximum_message_and_too_large<S: MessageSender, R: MessageReceiver>(tx: &mut S, rx: &mut R) {
    let max = tx.max_payload();
    assert!(max > 0, "a transport must carry some payload");
    match tx.alloc(max.saturating_add(1), 9) {
        Err(SendError::TooLarge { len, max: reported }) => {
            assert_eq!((len, reported), (u64::from(max) + 1, max));
        }
        Err(other) => panic!("max + 1 bytes must be TooLarge, got {other:?}"),
        Ok(_) => panic!("max + 1 bytes must be TooLarge, got a slot"),
    }
    if max < (64 << 20) {
        let oversized = std::vec![0u8; max as usize + 1];
        assert!(matches!(
            tx.send(9, &oversized),
            Err(SendError::TooLarge { .. })
        ));
    }
    assert_empty(rx);
    send_pattern(tx, 77, max, 9);
    expect_pattern(rx, 77, max, 9);
    // And again, now that the positions have moved: the maximum still fits after wrap-around.
    send_pattern(tx, 78, max, 10);
    expect_pattern(rx, 78, max, 10);
    assert_empty(rx);
}

/// Filling the transport yields `Full` (never `TooLarge`); popping makes room again, and nothing
/// sent before or after `Full` is lost or reordered.
pub fn full_is_transient<S: MessageSender, R: MessageReceiver>(tx: &mut S, rx: &mut R) {
    let len = (tx.max_payload() / 5).min(1024);
    let try_send = |tx: &mut S, seq: u32| match tx.alloc(len, 4) {
        Ok(mut slot) => {
            for (dst, src) in slot
                .payload_mut()
                .iter_mut()
                .zip(pattern(seq, len as usize))
            {
                *dst = src;
            }
            slot.push();
            true
        }
        Err(SendError::Full) => false,
        Err(other) => panic!("filling the transport must end in Full, got {other:?}"),
    };
    let mut sent = 0u32;
    let started = Instant::now();
    while try_send(tx, sent) {
        sent += 1;
        assert!(
            started.elapsed() < DELIVERY_TIMEOUT,
            "transport never reported Full after {sent} messages"
        );
    }
    assert!(
        sent >= 2,
        "an empty transport must accept two messages of max_payload / 5 bytes"
    );
    // TooLarge stays TooLarge when the transport is full.
    assert!(matches!(
        tx.alloc(tx.max_payload().saturating_add(1), 4),
        Err(SendError::TooLarge { .. })
    ));
    // Pop one at a time, offering a new message after each pop: room must come back before the
    // transport drains, and everything must arrive in order.
    let (mut received, mut refilled) = (0u32, 0u32);
    while received < sent {
        expect_pattern(rx, received, len, 4);
        received += 1;
        if refilled < 3 && try_send(tx, sent) {
            sent += 1;
            refilled += 1;
        }
        assert!(
            started.elapsed() < DELIVERY_TIMEOUT * 2,
            "draining took too long"
        );
    }
    assert!(refilled >= 1, "popping never made room for another message");
    assert_empty(rx);
}

/// Streams many buffers' worth of messages of varied sizes, so records wrap around the end of
/// any ring many times, with up to three messages in flight; every byte is checked.
pub fn wrap_around<S: MessageSender, R: MessageReceiver>(tx: &mut S, rx: &mut R) {
    let max = tx.max_payload();
    let lens = [
        1,
        7,
        8,
        9,
        max / 3,
        0,
        max / 2,
        63,
        max,
        15,
        max / 7 + 1,
        120,
        max / 4,
    ];
    let len_of = |seq: u32| lens[seq as usize % lens.len()].min(max);
    let total_target = u64::from(max.min(1 << 20)) * 24 + 4096;
    let (mut sent, mut received, mut sent_bytes) = (0u32, 0u32, 0u64);
    let mut in_flight: Vec<u32> = Vec::new();
    while sent_bytes < total_target {
        in_flight.push(len_of(sent));
        let room = in_flight.len() <= 3 && fits_in_flight(max, &in_flight);
        in_flight.pop();
        if room || in_flight.is_empty() {
            send_pattern(tx, sent, len_of(sent), sent as u16);
            in_flight.push(len_of(sent));
            sent_bytes += u64::from(len_of(sent)) + 8;
            sent += 1;
        } else {
            expect_pattern(rx, received, len_of(received), received as u16);
            in_flight.remove(0);
            received += 1;
        }
    }
    while received < sent {
        expect_pattern(rx, received, len_of(received), received as u16);
        received += 1;
    }
    assert_empty(rx);
}

/// A slot dropped without `push` publishes nothing, and the next message takes its place.
pub fn alloc_without_push_publishes_nothing<S: MessageSender, R: MessageReceiver>(
    tx: &mut S,
    rx: &mut R,
) {
    for round in 0..3u32 {
        {
            let mut slot = tx.alloc(tx.max_payload().min(32), 0xDEAD).expect("alloc");
            slot.payload_mut().fill(0xEE);
            // Dropped here, unpushed.
        }
        // Give a transport with delivery latency the chance to (wrongly) deliver it.
        std::thread::sleep(Duration::from_millis(1));
        assert_empty(rx);
        let len = tx.max_payload().min(24);
        send_pattern(tx, round, len, 0xBEEF);
        expect_pattern(rx, round, len, 0xBEEF);
    }
    assert_empty(rx);
}

/// `front` returns the same message, at the same address, until `pop`.
pub fn front_is_stable_until_pop<S: MessageSender, R: MessageReceiver>(tx: &mut S, rx: &mut R) {
    let (first_len, second_len) = (tx.max_payload().saturating_sub(40), 8);
    assert!(fits_in_flight(tx.max_payload(), &[first_len, second_len]));
    send_pattern(tx, 1, first_len, 1);
    send_pattern(tx, 2, second_len, 2);
    wait_readable(rx);
    let (ptr, tag) = {
        let first = rx.front().unwrap();
        (first.payload().as_ptr(), first.tag())
    };
    for _ in 0..3 {
        let again = rx.front().unwrap();
        assert_eq!((again.payload().as_ptr(), again.tag()), (ptr, tag));
        assert!(again
            .payload()
            .iter()
            .copied()
            .eq(pattern(1, first_len as usize)));
    }
    rx.pop().unwrap();
    expect_pattern(rx, 2, second_len, 2);
    assert_empty(rx);
}

/// Payloads are 8-byte aligned on both sides, whatever the lengths before them.
pub fn payloads_are_aligned<S: MessageSender, R: MessageReceiver>(tx: &mut S, rx: &mut R) {
    let max = tx.max_payload().min(64);
    for len in 0..=max {
        let mut slot = tx.alloc(len, 0).expect("alloc");
        assert_eq!(
            slot.payload_mut().as_ptr() as usize % 8,
            0,
            "send payload of {len} bytes"
        );
        slot.push();
        wait_readable(rx);
        assert_eq!(rx.front().unwrap().payload().as_ptr() as usize % 8, 0);
        rx.pop().unwrap();
    }
}

/// `recv_with` hands the message to the closure and pops it; on an empty receiver it does not
/// call the closure.
pub fn recv_with_pops<S: MessageSender, R: MessageReceiver>(tx: &mut S, rx: &mut R) {
    let mut called = false;
    assert_eq!(
        rx.recv_with(|_| called = true).err(),
        Some(RecvError::Empty)
    );
    assert!(!called);
    tx.send(5, b"abc").unwrap();
    wait_readable(rx);
    let got = rx.recv_with(|m| (m.tag(), m.payload().to_vec())).unwrap();
    assert_eq!(got, (5, b"abc".to_vec()));
    assert_empty(rx);
}

/// Expands to one `#[test]` per body of [`conformance`](crate::conformance), each running on a
/// fresh transport.
///
/// The first two arguments name the sender and receiver; after `=>` come statements that bind
/// them (as `mut`), evaluated anew inside every test.
///
/// ```ignore
/// spsc_core::conformance_suite!(tx, rx => let mut ring = MessageRing::<1024>::new();
///                                         let (mut tx, mut rx) = ring.split(););
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($tx:ident, $rx:ident => $($setup:tt)*) => {
        $crate::conformance_suite!(@tests $tx, $rx, { $($setup)* };
            starts_empty, fifo_order_and_tags, zero_length_messages,
            maximum_message_and_too_large, full_is_transient, wrap_around,
            alloc_without_push_publishes_nothing, front_is_stable_until_pop,
            payloads_are_aligned, recv_with_pops);
    };
    (@tests $tx:ident, $rx:ident, $setup:tt; $($name:ident),*) => {
        $( $crate::conformance_suite!(@one $tx, $rx, $name, $setup); )*
    };
    (@one $tx:ident, $rx:ident, $name:ident, { $($setup:tt)* }) => {
        #[test]
        fn $name() {
            $($setup)*
            $crate::conformance::$name(&mut $tx, &mut $rx);
        }
    };
}
